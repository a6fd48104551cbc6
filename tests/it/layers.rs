//! The layers of src/ (README "Layout", issue 18), one folder each, lowest first:
//! domain (pure, and its own crate: core/), store (SQLite), share (the remote), notify (alert delivery), app (what
//! the commands do). Code in a layer imports only its own layer and those below it;
//! `error` and `exit` are for everyone. Modules are named by their folder path
//! (`crate::domain::plan`) or by the short name the crate root re-exports
//! (`crate::plan`); both resolve to the folder here. Comments may mention anything;
//! test modules are code and keep to the layers too.

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

/// Module name to the layer's rank: each layer, and each module the crate root
/// re-exports by its short name (`pub use share::{remote, sync};` in src/lib.rs: its
/// layer's rank). A module that is not re-exported is reached only through its layer
/// (`crate::store::outbox`), which the layer's name ranks.
fn rank_of_module() -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = LAYERS
        .iter()
        .enumerate()
        .map(|(rank, l)| (l.to_string(), rank))
        .collect();
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    // One `pub use` may span lines: join them, then split at each semicolon.
    let code: String = lib
        .lines()
        .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    for stmt in code.split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((layer, names)) = path.split_once("::") else {
            continue;
        };
        let Some(rank) = LAYERS.iter().position(|l| *l == layer.trim()) else {
            continue;
        };
        for name in names
            .trim_matches(|c| c == '{' || c == '}' || c == ' ')
            .split(',')
        {
            let name = name.trim().to_string();
            if name.is_empty() {
                continue;
            }
            assert!(
                out.insert(name.clone(), rank).is_none(),
                "module name {name} is re-exported twice"
            );
        }
    }
    // A macro exported by a layer's file stands at the crate root (`crate::command!`).
    for (rank, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        rust_files(&src().join(layer), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for part in text.split("#[macro_export]").skip(1) {
                let name = part.trim_start().strip_prefix("macro_rules!").map(|rest| {
                    rest.trim_start()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                });
                if let Some(name) = name {
                    out.insert(name, rank);
                }
            }
        }
    }
    out
}

/// The modules `source` names as `crate::NAME` or `crate::LAYER::NAME` in code, the test
/// modules included (comments left out).
fn uses(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
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
    let mut wrong = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        rust_files(&src().join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in uses(&text) {
                if let Some(&used) = ranks.get(&name) {
                    if used > rank {
                        wrong.push(format!(
                            "{} (layer {layer}) imports crate::{name} (layer {})",
                            file.display(),
                            LAYERS[used]
                        ));
                    }
                } else if !["error", "exit", "Error", "Result"].contains(&name.as_str()) {
                    wrong.push(format!(
                        "{} names crate::{name}, which is in no layer",
                        file.display()
                    ));
                }
            }
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked >= 30, "only {checked} files checked");
}

#[test]
fn the_checker_sees_an_upward_import() {
    let ranks = rank_of_module();
    let names = uses("use crate::sync::Writer;\nuse crate::{time, app::cli, Error};\n// crate::app::runner\nfn f() { crate::store::Store::open(p); }\n#[cfg(test)]\nmod tests { use crate::cli; }\n");
    assert_eq!(names, ["sync", "time", "app", "Error", "store", "cli"]);
    assert_eq!(ranks["sync"], 2);
    assert_eq!(ranks["plan"], 0);
    assert_eq!(ranks["runner"], 4);
    assert_eq!(ranks["notify"], 3);
    assert_eq!(ranks["cli"], 4);
    // The macro app/cli.rs exports.
    assert_eq!(ranks["command"], 4);
    // Not re-exported, so reached only as crate::notify::slack / crate::store::journal.
    assert!(!ranks.contains_key("slack") && !ranks.contains_key("journal"));
}

/// Settings are read at the edge (src/app/environment.rs) and handed down as values: the
/// layers below app read no environment variable, but for the reads listed here, each
/// with its reason. A new one fails this test: add a field to `Settings` instead.
#[test]
fn the_layers_below_app_read_no_environment() {
    const ALLOWED: &[(&str, usize, &str)] = &[
        (
            "store/mod.rs",
            1,
            "BUILDSTATE_TEST_FAIL_COMMIT, a test hook behind the fail-points feature",
        ),
        (
            "share/remote.rs",
            2,
            "the clouds' own variables (AZURITE_BLOB_STORAGE_URL), read as object_store's \
             builders read them, and a test that one is unset",
        ),
    ];
    let mut wrong = Vec::new();
    for layer in &LAYERS[..4] {
        let mut files = Vec::new();
        rust_files(&src().join(layer), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let reads = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .filter(|l| l.contains("env::var") || l.contains("std::env::"))
                .count();
            let name = file.strip_prefix(src()).unwrap().display().to_string();
            let allowed = ALLOWED
                .iter()
                .find(|(f, _, _)| *f == name)
                .map_or(0, |(_, n, _)| *n);
            if reads != allowed {
                wrong.push(format!(
                    "src/{name} reads the environment {reads} time(s), {allowed} allowed"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The pure layer is its own crate (core/, over src/domain/, src/error.rs and
/// src/exit.rs): none of its dependencies does I/O, but rusqlite, which only the
/// `sqlite` feature (the state crate's conversion of SQLite's error) brings in. With
/// this and scripts/test building the crate alone, the compiler holds domain/ pure.
#[test]
fn the_pure_crate_depends_on_nothing_that_does_io() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("core/Cargo.toml"))
            .unwrap();
    let toml: toml::Table = manifest.parse().unwrap();
    let deps = toml["dependencies"].as_table().unwrap();
    assert!(deps.len() >= 5, "{deps:?}");
    for io in [
        "rusqlite",
        "object_store",
        "reqwest",
        "tokio",
        "libc",
        "tempfile",
        "gethostname",
    ] {
        match deps.get(io) {
            None => {}
            Some(d) if io == "rusqlite" => assert_eq!(
                d.get("optional").and_then(|o| o.as_bool()),
                Some(true),
                "rusqlite must stay optional"
            ),
            Some(_) => panic!("core/Cargo.toml depends on {io}"),
        }
    }
    assert_eq!(toml["features"]["sqlite"].as_array().unwrap().len(), 1);
    assert!(
        toml["features"].get("default").is_none(),
        "no default features: built alone it has none"
    );
    // The sources are src/'s, compiled once: the state crate declares none of them.
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    for m in ["domain", "error", "exit"] {
        assert!(
            !lib.contains(&format!("pub mod {m};")),
            "src/lib.rs compiles {m} a second time"
        );
    }
}
