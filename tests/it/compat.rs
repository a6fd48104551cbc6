//! Issue 28, what a fleet running mixed versions can rely on (docs/compatibility.md): a
//! snapshot of every version buildstate ever wrote, kept in tests/fixtures/snapshots/
//! (frozen: never regenerated), is read by this buildstate, pulled into a fresh database
//! through a folder remote, and its build is what was written.

use serde_json::Value;

use crate::util::Env;

fn fixture(v: u32) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/snapshots")
        .join(format!("v{v}.json"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: every snapshot version needs its fixture; when the version goes up, add one written by the new buildstate (docs/compatibility.md)",
            path.display()
        )
    })
}

#[test]
fn a_snapshot_of_every_version_ever_written_is_read() {
    for v in 1..=buildstate::snapshot::SCHEMA_VERSION {
        let bytes = fixture(v);
        let snap = buildstate::snapshot::Snapshot::from_json(&bytes)
            .unwrap_or_else(|e| panic!("version {v}: {e}"));
        assert_eq!(snap.schema_version, v);
        let id = format!("v{v}");
        assert_eq!(snap.build_id, id);
        let env = Env::new();
        let builds = env.path("remote/builds");
        std::fs::create_dir_all(&builds).unwrap();
        std::fs::write(builds.join(format!("{id}.json")), &bytes).unwrap();
        let url = format!("file://{}", env.path("remote").display());
        env.run("sync-cloud", &["--remote", &url, "pull", &id]).ok();
        let j: Value = env.run("check-state", &[&id, "--json", "--history"]).json();
        assert_eq!(
            (j["exists"].as_bool(), j["serial"].as_u64()),
            (Some(true), Some(snap.serial)),
            "version {v}: {j}"
        );
        let kinds: Vec<&str> = j["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        // What each version was made to carry.
        match v {
            1 => assert_eq!(
                (kinds.as_slice(), j["current_state"].as_u64()),
                (&["init", "start", "complete"][..], Some(5))
            ),
            2 => assert!(kinds.contains(&"force"), "{kinds:?}"),
            3 | 5 => {
                // Task results pruned: a version 3 snapshot says how many only in the
                // message; both read back as a typed count.
                let pruned = j["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["kind"] == "pruned")
                    .unwrap();
                assert_eq!(pruned["count"], 2, "version {v}: {pruned}");
            }
            4 => assert!(kinds.contains(&"unverified"), "{kinds:?}"),
            6 => assert_eq!(j["outputs"]["ami_id"]["value"], "ami-0fixture"),
            7 => {
                let r = env
                    .run("check-state", &[&id, "--resources", "--json"])
                    .ok()
                    .json();
                assert_eq!(r["resources"][0]["id"], "bs-v7-a1", "{r}");
            }
            8 => {
                // Its plan's state 5 waits for base-rhel9, which is not here.
                assert_eq!(j["decision"], "wait", "{j}");
                assert_eq!(j["waiting_for"][0]["build_id"], "base-rhel9", "{j}");
            }
            _ => panic!("version {v} has a fixture but nothing here says what it carries"),
        }
    }
    // A version this buildstate does not know yet is refused by name (exit 18).
    let mut next: Value = serde_json::from_slice(&fixture(1)).unwrap();
    next["schema_version"] = (buildstate::snapshot::SCHEMA_VERSION + 1).into();
    let err = buildstate::snapshot::Snapshot::from_json(next.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("upgrade buildstate"), "{err}");
}
