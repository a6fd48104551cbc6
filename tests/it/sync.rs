//! sync-cloud on the real binary, between separate databases sharing a file:// remote.
//! The same flows against real S3-API and Azure servers are in tests/python/test_sync.py.

use crate::util::Env;
use buildstate::exit;

struct Remote {
    _dir: tempfile::TempDir,
    url: String,
}

fn remote() -> Remote {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/remote", dir.path().display());
    Remote { _dir: dir, url }
}

fn sync(env: &Env, remote: &Remote, args: &[&str]) -> crate::util::Run {
    let mut full = vec!["--remote", &remote.url];
    full.extend(args);
    env.run("sync-cloud", &full)
}

fn history(env: &Env, id: &str) -> serde_json::Value {
    env.state(id)["history"].clone()
}

#[test]
fn two_databases_share_a_build_and_a_stale_push_is_refused() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    a.init("img-1");
    a.run("update-state", &["img-1", "complete", "5"]).ok();
    let j = sync(&a, &r, &["push", "img-1", "--json"]).ok().json();
    assert_eq!(
        (j["outcome"].as_str(), j["remote_serial"].as_u64()),
        (Some("pushed"), Some(2))
    );
    // Nothing changed: the next push makes no request worth the name.
    assert!(sync(&a, &r, &["push", "img-1"])
        .ok()
        .stdout
        .contains("unchanged"));

    // A fresh worker pulls it (creating its database) and carries on.
    sync(&b, &r, &["pull", "img-1"]).ok();
    assert_eq!(history(&b, "img-1"), history(&a, "img-1"));
    b.run("update-state", &["img-1", "complete", "10"]).ok();
    sync(&b, &r, &["push", "img-1"]).ok();

    // a wrote on top of what it saw, which is no longer the remote's: refused, and the
    // remote copy is still b's.
    a.run("update-state", &["img-1", "meta", "note=late"]).ok();
    let before = sync(&b, &r, &["status", "--json"]).ok().json();
    let refused = sync(&a, &r, &["push", "img-1", "--json"]).code(exit::REMOTE_CHANGED);
    assert_eq!(refused.json()["error"]["kind"], "remote_changed");
    assert!(refused.stderr.contains("pull it"), "{}", refused.stderr);
    assert_eq!(sync(&b, &r, &["status", "--json"]).ok().json(), before);

    // a's pull finds the histories diverged: nothing written, and the way out is named.
    let a_before = history(&a, "img-1");
    let d = sync(&a, &r, &["pull", "img-1"]).code(exit::DIVERGED);
    assert!(
        d.stderr.contains("--take-remote") && d.stderr.contains("--force"),
        "{}",
        d.stderr
    );
    assert_eq!(history(&a, "img-1"), a_before);
    let st = sync(&a, &r, &["status", "--json"]).ok().json();
    assert_eq!(st[0]["state"], "diverged");

    // A person takes the remote's side: a now holds b's history exactly.
    assert!(sync(&a, &r, &["pull", "img-1", "--take-remote"])
        .ok()
        .stdout
        .contains("replaced"));
    assert_eq!(history(&a, "img-1"), history(&b, "img-1"));
    assert_eq!(
        sync(&a, &r, &["status", "--json"]).ok().json()[0]["state"],
        "in_sync"
    );

    // Or the local side: push --force replaces the remote copy (b must then take it).
    b.run("update-state", &["img-1", "meta", "note=b"]).ok();
    a.run("update-state", &["img-1", "meta", "note=a"]).ok();
    sync(&b, &r, &["push", "img-1"]).ok();
    sync(&a, &r, &["push", "img-1"]).code(exit::REMOTE_CHANGED);
    sync(&a, &r, &["push", "img-1", "--force"]).ok();
    sync(&b, &r, &["pull", "img-1"]).code(exit::DIVERGED);
    sync(&b, &r, &["pull", "img-1", "--take-remote"]).ok();
    assert_eq!(b.state("img-1")["metadata"]["note"], "a");
}

#[test]
fn another_build_with_the_same_id_is_never_merged() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    a.init("img-1");
    b.init("img-1"); // same id, another lineage
    sync(&a, &r, &["push", "img-1"]).ok();
    let e = sync(&b, &r, &["push", "img-1"]).code(exit::REMOTE_CHANGED);
    assert!(e.stderr.contains("exists already"), "{}", e.stderr);
    let e = sync(&b, &r, &["pull", "img-1"]).code(exit::DIVERGED);
    assert!(
        e.stderr.contains("different build with the same id"),
        "{}",
        e.stderr
    );
}

#[test]
fn all_builds_status_and_bad_input() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    for i in 0..25 {
        a.init(&format!("b{i:02}"));
    }
    let j = sync(&a, &r, &["push", "--all", "--json"]).ok().json();
    assert_eq!(j.as_array().unwrap().len(), 25);
    assert!(j
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["outcome"] == "pushed"));
    let pulled = sync(&b, &r, &["pull", "--all"]).ok();
    assert!(
        pulled.stderr.contains("pulled 25 build(s), 0 failed"),
        "{}",
        pulled.stderr
    );
    a.run("update-state", &["b03", "complete", "5"]).ok();
    let st = sync(&b, &r, &["status", "--json"]).ok().json();
    assert!(st
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "in_sync"));
    sync(&a, &r, &["push", "--all"]).ok();
    let st = sync(&b, &r, &["status", "--json"]).ok().json();
    let row = st
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["build_id"] == "b03")
        .unwrap();
    assert_eq!(
        (
            row["state"].as_str(),
            row["local_serial"].as_u64(),
            row["remote_serial"].as_u64()
        ),
        (Some("remote_ahead"), Some(1), Some(2))
    );

    // No remote, a bad remote, an unknown build: clear errors, exit codes, nothing written.
    let e = b.run("sync-cloud", &["status"]).code(exit::INVALID_INPUT);
    assert!(e.stderr.contains("BUILDSTATE_REMOTE"), "{}", e.stderr);
    let e = b
        .run("sync-cloud", &["--remote", "ftp://x/y", "status"])
        .code(exit::INVALID_INPUT);
    assert!(e.stderr.contains("unknown scheme"), "{}", e.stderr);
    let e = sync(&b, &r, &["pull", "nope"]).code(exit::UNKNOWN_BUILD);
    assert!(
        e.stderr.contains("has no copy of build 'nope'"),
        "{}",
        e.stderr
    );
    // A snapshot altered on the remote is refused, and the local copy stays as it was.
    let obj = std::path::Path::new(r.url.trim_start_matches("file://")).join("builds/b03.json");
    let text = std::fs::read_to_string(&obj)
        .unwrap()
        .replace("\"serial\":2", "\"serial\":7");
    std::fs::write(&obj, text).unwrap();
    let before = b.state("b03");
    sync(&b, &r, &["pull", "b03"]).code(exit::INVALID_SNAPSHOT);
    assert_eq!(b.state("b03"), before);
}

#[test]
fn backup_and_restore_the_whole_database() {
    let r = remote();
    let a = Env::new();
    a.init("img-1");
    a.run(
        "update-state",
        &["img-1", "fail", "5", "--error", "it's 'quoted'"],
    )
    .ok();
    sync(&a, &r, &["backup", "--name", "nightly.db"]).ok();
    sync(&a, &r, &["backup", "--name", "nightly.db"]).code(exit::REMOTE_CHANGED);
    let to = a.path("restored/buildstate.db");
    sync(
        &a,
        &r,
        &["restore", "nightly.db", "--to", to.to_str().unwrap()],
    )
    .ok();
    let restored = Env {
        dir: tempfile::tempdir().unwrap(),
        db: to.clone(),
    };
    assert_eq!(
        restored.state("img-1")["history"],
        a.state("img-1")["history"]
    );
    // Never over an existing file, and never a file that is not a buildstate database.
    sync(
        &a,
        &r,
        &["restore", "nightly.db", "--to", to.to_str().unwrap()],
    )
    .code(exit::INVALID_INPUT);
    let bogus = std::path::Path::new(r.url.trim_start_matches("file://")).join("backups/bogus.db");
    std::fs::write(&bogus, b"not sqlite at all").unwrap();
    let other = a.path("other.db");
    sync(
        &a,
        &r,
        &["restore", "bogus.db", "--to", other.to_str().unwrap()],
    )
    .code(exit::DATABASE);
    assert!(!other.exists());
}

#[test]
fn racing_pushes_exactly_one_wins_each_round() {
    let r = remote();
    let base = Env::new();
    base.init("img-1");
    sync(&base, &r, &["push", "img-1"]).ok();
    let workers: Vec<Env> = (0..6).map(|_| Env::new()).collect();
    for w in &workers {
        sync(w, &r, &["pull", "img-1"]).ok();
    }
    for round in 0..3 {
        // Every worker writes on top of the same remote copy, then all push at once.
        for (i, w) in workers.iter().enumerate() {
            w.run(
                "update-state",
                &["img-1", "meta", &format!("w{i}=r{round}")],
            )
            .ok();
        }
        let children: Vec<_> = workers
            .iter()
            .map(|w| {
                w.command("sync-cloud")
                    .args(["--remote", &r.url, "push", "img-1"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let codes: Vec<i32> = children
            .into_iter()
            .map(|mut c| c.wait().unwrap().code().unwrap())
            .collect();
        let winners: Vec<usize> = codes
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == 0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {codes:?}");
        assert!(
            codes.iter().all(|c| *c == 0 || *c == exit::REMOTE_CHANGED),
            "{codes:?}"
        );
        // The winner's history is the remote's; the others take it, losing only their
        // own unpushed write, and the serials stay contiguous.
        let w = &workers[winners[0]];
        for (i, other) in workers.iter().enumerate() {
            if i != winners[0] {
                sync(other, &r, &["pull", "img-1", "--take-remote"]).ok();
                assert_eq!(history(other, "img-1"), history(w, "img-1"));
            }
        }
        let h = history(w, "img-1");
        for (i, e) in h.as_array().unwrap().iter().enumerate() {
            assert_eq!(e["seq"], i as u64 + 1);
        }
        assert_eq!(h.as_array().unwrap().last().unwrap()["serial"], 2 + round);
    }
}

/// Remote mode: `n` processes, each with its own fresh database, run `args` at once.
fn remote_mode_race(
    r: &Remote,
    n: usize,
    args: impl Fn(usize) -> Vec<String>,
) -> (Vec<Env>, Vec<i32>) {
    let workers: Vec<Env> = (0..n).map(|_| Env::new()).collect();
    let children: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            w.command("update-state")
                .env("BUILDSTATE_REMOTE", &r.url)
                .args(args(i))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes = children
        .into_iter()
        .map(|mut c| c.wait().unwrap().code().unwrap())
        .collect();
    (workers, codes)
}

#[test]
fn remote_mode_two_machines_never_both_start_a_state_and_no_write_is_lost() {
    let r = remote();
    let first = Env::new();
    let remote_mode = |env: &Env, tool: &str, args: &[&str]| {
        let mut c = env.command(tool);
        c.env("BUILDSTATE_REMOTE", &r.url).args(args);
        let o = c.output().unwrap();
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(
        remote_mode(
            &first,
            "init-state",
            &["img-1", "--cloud", "aws", "--image", "rhel9"]
        )
        .0,
        0
    );

    // Six machines, six fresh databases, all start state 5 at once: exactly one does.
    let (_, codes) = remote_mode_race(&r, 6, |i| {
        ["img-1", "start", "5", "--owner", &format!("w{i}")]
            .map(String::from)
            .to_vec()
    });
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert!(
        codes.iter().all(|c| *c == 0 || *c == exit::BUSY),
        "{codes:?}"
    );
    let (code, out) = remote_mode(&first, "check-state", &["img-1", "--json"]);
    assert_eq!(code, exit::BUSY, "{out}");

    // Eight machines write metadata at once: every write lands, none is lost, and the
    // serials stay contiguous (each write was retried on top of the others).
    let (_, codes) = remote_mode_race(&r, 8, |i| {
        ["img-1", "meta", &format!("w{i}=done")]
            .map(String::from)
            .to_vec()
    });
    assert_eq!(codes, vec![0; 8]);
    let (_, out) = remote_mode(&first, "check-state", &["img-1", "--json", "--history"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    for i in 0..8 {
        assert_eq!(j["metadata"][format!("w{i}")], "done", "{}", j["metadata"]);
    }
    assert_eq!(j["serial"], 2 + 8);
    let history = j["history"].as_array().unwrap();
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
    }
    let serials: Vec<u64> = history
        .iter()
        .map(|e| e["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, (1..=10).collect::<Vec<_>>());
}

#[test]
fn remote_mode_machines_creating_the_same_build_at_once_agree_on_one() {
    let r = remote();
    let workers: Vec<Env> = (0..6).map(|_| Env::new()).collect();
    let children: Vec<_> = workers
        .iter()
        .map(|w| {
            w.command("init-state")
                .env("BUILDSTATE_REMOTE", &r.url)
                .args(["img-1", "--cloud", "aws", "--image", "rhel9", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let reports: Vec<serde_json::Value> = outs
        .iter()
        .map(|o| serde_json::from_slice(&o.stdout).unwrap())
        .collect();
    assert_eq!(reports.iter().filter(|j| j["created"] == true).count(), 1);
    let lineage = &reports[0]["lineage"];
    assert!(reports
        .iter()
        .all(|j| &j["lineage"] == lineage && j["serial"] == 1));
    // Another identity under the same id is a conflict, as for a local init.
    let e = Env::new()
        .command("init-state")
        .env("BUILDSTATE_REMOTE", &r.url)
        .args(["img-1", "--cloud", "gcp", "--image", "rhel9"])
        .output()
        .unwrap();
    assert_eq!(
        e.status.code(),
        Some(exit::CONFLICT),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
}
