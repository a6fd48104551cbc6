//! The layers of src/ (README "Layout", issue 18): the pure decisions never import the
//! store, sharing, alerts delivery or the commands' logic, and the store never imports
//! alert delivery (the store queues alerts the pure `alerts` module computes; the one
//! import circle, store <-> notify, is gone). Doc comments may mention any module.

use std::path::Path;

/// The `crate::NAME` modules `source` uses in code (comments left out).
fn uses(source: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn lower_layers_do_not_import_upper_ones() {
    let upper = [
        "store",
        "sync",
        "remote",
        "notify",
        "runner",
        "report",
        "cli",
        "concourse",
        "monitor",
        "verify",
        "inputs",
    ];
    for pure in [
        "src/plan.rs",
        "src/policy.rs",
        "src/model/mod.rs",
        "src/model/record.rs",
        "src/model/attempts.rs",
        "src/model/transition.rs",
        "src/manifest.rs",
        "src/decide.rs",
        "src/alerts.rs",
        "src/time.rs",
        "src/redact.rs",
        "src/context.rs",
    ] {
        let found: Vec<String> = uses(&read(pure))
            .into_iter()
            .filter(|m| upper.contains(&m.as_str()))
            .collect();
        assert!(found.is_empty(), "{pure} imports {found:?}");
    }
    for store in [
        "src/store/mod.rs",
        "src/store/outbox.rs",
        "src/store/schema.rs",
        "src/store/snapshot.rs",
    ] {
        let found: Vec<String> = uses(&read(store))
            .into_iter()
            .filter(|m| {
                ["notify", "runner", "report", "cli", "concourse", "monitor"].contains(&m.as_str())
            })
            .collect();
        assert!(found.is_empty(), "{store} imports {found:?}");
    }
}
