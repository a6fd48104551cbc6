//! `monitor archive` and `monitor unarchive` (issue 17) on a file:// remote with the real
//! binaries: a round trip that gives back the same history and the same snapshot bytes,
//! what check-state and init-state say of an archived build, a kill -9 at the worst
//! moment, and the history still append-only outside the archive path.

use std::os::unix::process::ExitStatusExt;

use crate::util::{strs, Env};
use buildstate::exit;

const PLAN: &str =
    "name = \"two\"\n[[state]]\nid = 0\nname = \"init\"\nexpected = \"1m\"\n[[state]]\nid = 5\nname = \"build\"\nexpected = \"1m\"\n";

fn completed(env: &Env, id: &str) {
    let plan = env.write("plan.toml", PLAN);
    let plan = plan.to_str().unwrap();
    env.run(
        "init-state",
        &[id, "--cloud", "aws", "--image", "rhel9", "--plan", plan],
    )
    .ok();
    env.run("update-state", &[id, "start", "5"]).ok();
    env.run("update-state", &[id, "meta", "ami=ami-1 it's"])
        .ok();
    env.run("update-state", &[id, "complete", "5"]).ok();
}

/// `monitor archive --completed-before 0s --remote REMOTE --json`, which must succeed.
fn archive_json(env: &Env, remote: &str) -> serde_json::Value {
    env.run(
        "monitor",
        &[
            "archive",
            "--completed-before",
            "0s",
            "--remote",
            remote,
            "--json",
        ],
    )
    .ok()
    .json()
}

fn history(env: &Env, id: &str) -> serde_json::Value {
    env.run("check-state", &[id, "--history", "--json"])
        .code(exit::COMPLETED)
        .json()
}

#[test]
fn archive_and_unarchive_round_trip() {
    let env = Env::new();
    let remote_dir = env.path("remote");
    let remote = format!("file://{}", remote_dir.display());
    completed(&env, "a1");
    completed(&env, "a2");
    env.init("c1");
    env.run("update-state", &["c1", "cancel", "--reason", "not needed"])
        .ok();
    env.init("p1");
    let before = history(&env, "a1");
    let r = env.run("check-state", &["c1"]).code(exit::BLOCKED);
    assert!(
        r.stdout.starts_with("build c1: needs a person\n"),
        "{}",
        r.stdout
    );

    // An unwritable remote: the first failure stops the run (exit 17), nothing leaves.
    let blocked = env.write("not-a-folder", "x");
    let bad = format!("file://{}/sub", blocked.display());
    let r = env
        .run(
            "monitor",
            &[
                "archive",
                "--completed-before",
                "0s",
                "--remote",
                &bad,
                "--json",
            ],
        )
        .code(exit::REMOTE);
    let failed = r.json()["failed"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed[1][1].as_str().unwrap().contains("not attempted"),
        "{failed:?}"
    );
    assert_eq!(history(&env, "a1"), before);

    // Nothing asked: a clear refusal; no remote: another.
    let r = env
        .run("monitor", &["archive", "--remote", &remote])
        .code(exit::INVALID_INPUT);
    assert!(r.stderr.contains("--completed-before"), "{}", r.stderr);
    let r = env
        .run("monitor", &["archive", "--completed-before", "0s"])
        .code(exit::INVALID_INPUT);
    assert!(r.stderr.contains("needs a remote"), "{}", r.stderr);

    // Completed builds only: the cancelled and the pending one stay.
    let report = archive_json(&env, &remote);
    assert_eq!(report["archived"], serde_json::json!(["a1", "a2"]));
    assert!(report["size_before_bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["vacuumed"], false);
    let object = remote_dir.join("archive/builds/a1.json");
    let archived_bytes = std::fs::read(&object).unwrap();

    // Where it went, from check-state (text and JSON) and init-state.
    let r = env.run("check-state", &["a1"]).code(exit::UNKNOWN_BUILD);
    assert!(
        r.stderr.contains("is archived") && r.stderr.contains("monitor unarchive a1 --remote"),
        "{}",
        r.stderr
    );
    let r = env
        .run("check-state", &["a1", "--json"])
        .code(exit::UNKNOWN_BUILD);
    assert_eq!(r.json()["error"]["kind"], "archived");
    let r = env
        .run("init-state", &["a1", "--cloud", "aws", "--image", "rhel9"])
        .code(exit::UNKNOWN_BUILD);
    assert!(r.stderr.contains("is archived"), "{}", r.stderr);
    let r = env
        .run("update-state", &["a1", "meta", "k=v"])
        .code(exit::UNKNOWN_BUILD);
    assert!(r.stderr.contains("is archived"), "{}", r.stderr);
    let status = env.run("monitor", &["status", "--json"]).ok().json();
    let ids = strs(&status, "build_id");
    assert_eq!(ids, ["c1", "p1"]);

    // Back whole: the same history, metadata verbatim.
    let r = env
        .run("monitor", &["unarchive", "a1", "--remote", &remote])
        .ok();
    assert!(r.stdout.contains("back from the archive"), "{}", r.stdout);
    assert_eq!(history(&env, "a1"), before);
    let state = env.state("a1");
    assert_eq!(state["metadata"]["ami"], "ami-1 it's");
    // ... and its snapshot is byte-identical: archiving it again finds the object there
    // and equal to what it would write, so the build goes again and the object is
    // untouched.
    let again = env
        .run(
            "monitor",
            &[
                "archive",
                "--completed-before",
                "0s",
                "--cancelled-before",
                "0s",
                "--remote",
                &remote,
                "--vacuum",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(again["archived"], serde_json::json!(["a1", "c1"]));
    assert_eq!(again["vacuumed"], true);
    assert_eq!(std::fs::read(&object).unwrap(), archived_bytes);

    // Another machine brings a build back from the archive into a new database.
    let other = env.path("other.db");
    let mut c = env.command_on("monitor", &other);
    c.args(["unarchive", "a2", "--remote", &remote]);
    env.run_with(&mut c, None).ok();
    let mut c = env.command_on("check-state", &other);
    c.args(["a2"]);
    env.run_with(&mut c, None).code(exit::COMPLETED);

    // A damaged archive object: named, nothing written, the build stays archived.
    let c1 = remote_dir.join("archive/builds/c1.json");
    let good = std::fs::read(&c1).unwrap();
    std::fs::write(
        &c1,
        String::from_utf8(good.clone())
            .unwrap()
            .replace("\"cancel\"", "\"cancelx\""),
    )
    .unwrap();
    let r = env
        .run("monitor", &["unarchive", "c1", "--remote", &remote])
        .code(exit::INVALID_SNAPSHOT);
    assert!(
        r.stderr.contains("archive/builds/c1.json") && r.stderr.contains("stays archived"),
        "{}",
        r.stderr
    );
    env.run("check-state", &["c1"]).code(exit::UNKNOWN_BUILD);
    std::fs::write(&c1, good).unwrap();

    // Not in the archive: named as such.
    let r = env
        .run("monitor", &["unarchive", "nope", "--remote", &remote])
        .code(exit::UNKNOWN_BUILD);
    assert!(
        r.stderr.contains("no archived build 'nope'"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_kill_at_the_worst_moment_loses_nothing_and_a_rerun_finishes() {
    let env = Env::new();
    let remote_dir = env.path("remote");
    let remote = format!("file://{}", remote_dir.display());
    let ids: Vec<String> = (0..30).map(|i| format!("b{i:02}")).collect();
    let mut histories = Vec::new();
    for id in &ids {
        completed(&env, id);
        histories.push(history(&env, id));
    }
    // SIGKILL right after the 10th snapshot is safe on the remote, before it is removed
    // here (a test hook).
    crate::util::need_fail_points();
    let mut c = env.command("monitor");
    c.env("BUILDSTATE_TEST_KILL_AFTER_ARCHIVED", "10").args([
        "archive",
        "--completed-before",
        "0s",
        "--remote",
        &remote,
    ]);
    let status = c.status().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let archived = std::fs::read_dir(remote_dir.join("archive/builds"))
        .unwrap()
        .count();
    assert_eq!(archived, 10);
    let here = env.run("monitor", &["status", "--json"]).ok().json();
    assert_eq!(
        here.as_array().unwrap().len(),
        21,
        "9 removed, the 10th still here"
    );

    // The rerun finishes the job: the 10th is found on the remote, equal, and removed.
    let report = archive_json(&env, &remote);
    assert_eq!(report["archived"].as_array().unwrap().len(), 21);
    assert_eq!(report["failed"], serde_json::json!([]));
    let here = env.run("monitor", &["status", "--json"]).ok().json();
    assert_eq!(here, serde_json::json!([]));
    // Every build comes back whole.
    for (id, h) in ids.iter().zip(&histories) {
        env.run("monitor", &["unarchive", id, "--remote", &remote])
            .ok();
        assert_eq!(&history(&env, id), h, "{id}");
    }
}

#[test]
fn the_history_stays_append_only_outside_the_archive_path() {
    let env = Env::new();
    completed(&env, "a1");
    crate::util::assert_append_only(&env.db, "DELETE FROM events WHERE build_id = 'a1'");
    crate::util::assert_append_only(
        &env.db,
        "UPDATE events SET message = 'x' WHERE build_id = 'a1'",
    );
}

#[test]
fn archiving_still_works_after_a_person_took_the_remote_side() {
    // pull --take-remote replaces a build's history through the same gate; the trigger
    // that guards the history must be the same afterwards (it once was re-created
    // without the gate, and archiving then failed for good).
    let env = Env::new();
    let shared = format!("file://{}", env.path("shared").display());
    let archive = format!("file://{}", env.path("archive").display());
    completed(&env, "a1");
    env.run("sync-cloud", &["--remote", &shared, "push", "a1"])
        .ok();
    let other = env.path("other.db");
    let on_other = |args: &[&str]| {
        let mut c = env.command_on("sync-cloud", &other);
        c.arg("--remote").arg(&shared).args(args);
        env.run_with(&mut c, None)
    };
    on_other(&["pull", "a1"]).ok();
    let mut c = env.command_on("update-state", &other);
    c.args(["a1", "meta", "side=other"]);
    env.run_with(&mut c, None).ok();
    on_other(&["push", "a1"]).ok();
    env.run("update-state", &["a1", "meta", "side=here"]).ok();
    env.run("sync-cloud", &["--remote", &shared, "pull", "a1"])
        .code(exit::DIVERGED);
    env.run(
        "sync-cloud",
        &["--remote", &shared, "pull", "a1", "--take-remote"],
    )
    .ok();
    assert_eq!(env.state("a1")["metadata"]["side"], "other");
    let report = archive_json(&env, &archive);
    assert_eq!(report["archived"], serde_json::json!(["a1"]), "{report}");
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'events_append_only_delete'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("archive_gate"), "{sql}");
}

/// Task results of `id` recorded `days` ago each, written through the library as the
/// Ansible callback writes them (one batch).
fn tasks(db: &std::path::Path, id: &str, days: &[u64]) {
    use buildstate::model::{Ctx, TaskRecord, Transition};
    let now = std::time::SystemTime::now();
    let records = days
        .iter()
        .enumerate()
        .map(|(i, d)| TaskRecord {
            state: Some(5),
            task: format!("task {i} ({d} days old)"),
            host: "web-1".into(),
            status: "ok".into(),
            duration_ms: Some(10),
            message: None,
            at: now - std::time::Duration::from_secs(d * 86_400),
        })
        .collect();
    let mut store = buildstate::store::Store::open(db).unwrap();
    let actor = buildstate::environment::actor("test");
    store
        .transition(id, &Transition::Tasks { records }, &actor, &Ctx::live())
        .unwrap();
}

/// (seq, kind, message) of every event of `id`, as check-state shows them.
fn events(r: &serde_json::Value) -> Vec<(u64, String, String)> {
    r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn task_results_follow_their_own_retention() {
    let env = Env::new();
    env.init("t1");
    env.run("update-state", &["t1", "start", "5"]).ok();
    tasks(&env.db, "t1", &[40, 35, 31, 2, 0]);
    env.run("update-state", &["t1", "meta", "ami=ami-1"]).ok();
    tasks(&env.db, "t1", &[45]);
    env.init("t2");
    tasks(&env.db, "t2", &[1]);
    let before = events(&env.state("t1"));
    let prune = |args: &[&str]| {
        let mut a = vec!["prune-tasks", "--json"];
        a.extend_from_slice(args);
        env.run("monitor", &a).ok().json()
    };

    let r = prune(&["--older-than", "30d"]);
    assert_eq!(r["matched"], 1, "{r}");
    assert_eq!(r["pruned"], serde_json::json!([["t1", 4]]), "{r}");
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");

    // The four old task results left; every other event stayed as it was, numbers
    // included, and one `pruned` event says what left and who did it.
    let after = events(&env.state("t1"));
    let old = |m: &str| {
        ["40 days", "35 days", "31 days", "45 days"]
            .iter()
            .any(|d| m.contains(d))
    };
    let kept: Vec<_> = before.iter().filter(|(_, _, m)| !old(m)).cloned().collect();
    assert_eq!(after[..after.len() - 1], kept[..], "{after:?}");
    assert_eq!(before.len() - 4 + 1, after.len());
    let (seq, kind, message) = after.last().unwrap();
    assert_eq!((*seq, kind.as_str()), (before.len() as u64 + 1, "pruned"));
    assert!(
        message.starts_with("4 task result(s) recorded before "),
        "{message}"
    );
    // t2's task result is a day old: untouched, no write.
    assert_eq!(events(&env.state("t2")).len(), 2);

    // Nothing old is left: a second run writes nothing.
    let serial = env.state("t1")["serial"].clone();
    let r = prune(&["--older-than", "30d"]);
    assert_eq!(
        (r["matched"].clone(), r["pruned"].clone()),
        (0.into(), serde_json::json!([]))
    );
    assert_eq!(env.state("t1")["serial"], serial);

    // The build goes on, and travels with its gaps: a second database pulls the same
    // history from a file:// remote, and the snapshot is schema version 5 (the typed
    // count of the pruned results).
    env.run("update-state", &["t1", "complete", "5"]).ok();
    let remote = format!("file://{}", env.path("remote").display());
    env.run("sync-cloud", &["--remote", &remote, "push", "t1"])
        .ok();
    let object = std::fs::read(env.path("remote/builds/t1.json")).unwrap();
    let snap: serde_json::Value = serde_json::from_slice(&object).unwrap();
    assert_eq!(snap["schema_version"], 5);
    let other = env.path("other.db");
    let mut c = env.command_on("sync-cloud", &other);
    c.args(["--remote", &remote, "pull", "t1"]);
    env.run_with(&mut c, None).ok();
    let mut c = env.command_on("check-state", &other);
    c.args(["t1", "--history", "--json"]);
    let theirs = env.run_with(&mut c, None).json();
    assert_eq!(events(&theirs), events(&env.state("t1")));

    // Outside retention and archiving the history stays append-only.
    crate::util::assert_append_only(
        &env.db,
        "DELETE FROM events WHERE build_id = 't1' AND kind = 'task'",
    );
}

#[test]
fn pruning_through_the_remote_reaches_every_machine() {
    // Remote mode: a cron host with no database prunes through the remote; a worker
    // that holds the old task results drops them on its next pull and writes on.
    let env = Env::new();
    let remote = format!("file://{}", env.path("shared").display());
    env.init("r1");
    tasks(&env.db, "r1", &[60, 50, 1]);
    env.run("sync-cloud", &["--remote", &remote, "push", "r1"])
        .ok();
    let on = |db: &std::path::Path, name: &str, args: &[&str]| {
        let mut c = env.command_on(name, db);
        c.env("BUILDSTATE_REMOTE", &remote).args(args);
        env.run_with(&mut c, None)
    };
    let cron = env.path("cron.db");
    let r = on(
        &cron,
        "monitor",
        &["prune-tasks", "--older-than", "30d", "--json"],
    )
    .ok()
    .json();
    assert_eq!(r["pruned"], serde_json::json!([["r1", 2]]), "{r}");
    let object = std::fs::read(env.path("shared/builds/r1.json")).unwrap();
    let snap: serde_json::Value = serde_json::from_slice(&object).unwrap();
    let kinds = strs(&snap["events"], "kind");
    assert_eq!(kinds, ["init", "task", "pruned"]);

    // This database still has all three; its next write (remote mode) pulls the
    // pruned copy first, drops the two, and lands on top.
    assert_eq!(events(&env.state("r1")).len(), 4);
    on(&env.db, "update-state", &["r1", "meta", "after=prune"]).ok();
    let here = events(&env.state("r1"));
    let seqs: Vec<u64> = here.iter().map(|e| e.0).collect();
    assert_eq!(seqs, [1, 4, 5, 6], "{here:?}");
    let mut c = env.command_on("check-state", &cron);
    c.env("BUILDSTATE_REMOTE", &remote)
        .args(["r1", "--history", "--json"]);
    assert_eq!(events(&env.run_with(&mut c, None).json()), here);
}

#[test]
fn vacuum_with_a_reader_open_says_the_space_waits_for_it() {
    let env = Env::new();
    let remote = format!("file://{}", env.path("remote").display());
    for i in 0..20 {
        completed(&env, &format!("v{i}"));
    }
    // Another process reading: an open read transaction holds the WAL.
    let reader = rusqlite::Connection::open(&env.db).unwrap();
    reader
        .execute_batch("BEGIN; SELECT COUNT(*) FROM events;")
        .unwrap();
    let archive_vacuum = || {
        env.run(
            "monitor",
            &[
                "archive",
                "--completed-before",
                "0s",
                "--remote",
                &remote,
                "--vacuum",
                "--json",
            ],
        )
        .ok()
        .json()
    };
    let r = archive_vacuum();
    assert_eq!(r["archived"].as_array().unwrap().len(), 20, "{r}");
    assert_eq!(r["vacuumed"], false, "{r}");
    assert_eq!(r["vacuum_deferred"], true, "{r}");
    drop(reader);
    // Without a reader the space is given back.
    completed(&env, "w1");
    let r = archive_vacuum();
    assert_eq!(
        (r["vacuumed"].clone(), r["vacuum_deferred"].clone()),
        (true.into(), false.into()),
        "{r}"
    );
    assert!(
        r["size_after_bytes"].as_u64() <= r["size_before_bytes"].as_u64(),
        "{r}"
    );
}

/// `monitor metrics`' counter lines (`_total`, `_count`, `_sum`), by series.
fn counters(env: &Env) -> std::collections::BTreeMap<String, f64> {
    let text = env.run("monitor", &["metrics"]).ok().stdout;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.contains("_total{") || l.contains("_seconds_count{") || l.contains("_seconds_sum{")
        })
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn counters_never_go_backwards_across_archive_unarchive_and_pruning() {
    let env = Env::new();
    let remote = format!("file://{}", env.path("remote").display());
    // r1: state 5 retried twice, then completed.
    completed(&env, "r1");
    let plan = env.path("plan.toml");
    env.init_with_plan("r2", &plan).ok();
    for _ in 0..3 {
        env.run("update-state", &["r2", "start", "5"]).ok();
        env.run(
            "update-state",
            &[
                "r2",
                "fail",
                "5",
                "--error",
                "flaky",
                "--category",
                "transient",
            ],
        )
        .ok();
        env.run("update-state", &["r2", "retry", "5", "--reason", "again"])
            .ok();
    }
    env.run("update-state", &["r2", "start", "5"]).ok();
    env.run("update-state", &["r2", "complete", "5"]).ok();
    let before = counters(&env);
    let retries = "buildstate_retries_total{plan=\"two\",state=\"5\"}";
    assert_eq!(before[retries], 3.0, "{before:?}");
    let two = "buildstate_state_duration_seconds_count{plan=\"two\",state=\"5\"}";
    assert_eq!(before[two], 2.0, "{before:?}");

    // Both builds leave for the archive: every counter stays.
    let r = archive_json(&env, &remote);
    assert_eq!(r["archived"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(counters(&env), before);
    // Pruning task results changes none either.
    env.run("monitor", &["prune-tasks", "--older-than", "0s"])
        .ok();
    assert_eq!(counters(&env), before);
    // One comes back: counted once, not twice.
    env.run("monitor", &["unarchive", "r2", "--remote", &remote])
        .ok();
    assert_eq!(counters(&env), before);
    // And new work counts on top.
    env.run(
        "update-state",
        &["r2", "rollback", "--to", "0", "--reason", "again"],
    )
    .ok();
    env.run("update-state", &["r2", "start", "5"]).ok();
    env.run("update-state", &["r2", "complete", "5"]).ok();
    let after = counters(&env);
    for (series, v) in &before {
        assert!(
            after[series] >= *v,
            "{series} went from {v} to {}",
            after[series]
        );
    }

    // promtool, Prometheus's own checker, accepts the exposition.
    let metrics = env.run("monitor", &["metrics"]).ok().stdout;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus) is installed by scripts/test");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_kill_during_archive_writes_leaves_no_temporary_file_on_the_remote() {
    let env = Env::new();
    let remote_dir = env.path("remote");
    let remote = format!("file://{}", remote_dir.display());
    for i in 0..40 {
        completed(&env, &format!("k{i:02}"));
    }
    // SIGKILL at moments spread over the run: some land in the middle of a write.
    for delay_ms in [30u64, 60, 90, 120, 150, 200, 250, 300] {
        let mut c = env.command("monitor");
        c.args(["archive", "--completed-before", "0s", "--remote", &remote])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
    }
    env.run(
        "monitor",
        &["archive", "--completed-before", "0s", "--remote", &remote],
    )
    .ok();
    let dir = remote_dir.join("archive").join("builds");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let stray: Vec<&String> = names.iter().filter(|n| !n.ends_with(".json")).collect();
    assert!(stray.is_empty(), "left in {}: {stray:?}", dir.display());
    assert_eq!(names.len(), 40, "{names:?}");
}

#[test]
fn in_remote_mode_archive_takes_the_remote_copy_as_it_is_now() {
    let env = Env::new();
    let remote = format!("file://{}", env.path("remote").display());
    let on = |db: &std::path::Path, tool: &str, args: &[&str]| {
        let mut c = env.command_on(tool, db);
        c.env("BUILDSTATE_REMOTE", &remote).args(args);
        env.run_with(&mut c, None)
    };
    let (a, b) = (env.path("a.db"), env.path("b.db"));
    // Completed on machine a: every state done.
    let plan = env.write(
        "one.toml",
        "name = \"one\"\n[[state]]\nid = 5\nname = \"bake\"\nexpected = \"1m\"\n",
    );
    on(
        &a,
        "init-state",
        &[
            "y",
            "--cloud",
            "aws",
            "--image",
            "rhel9",
            "--plan",
            plan.to_str().unwrap(),
        ],
    )
    .ok();
    on(&a, "update-state", &["y", "start", "5"]).ok();
    on(&a, "update-state", &["y", "complete", "5"]).ok();
    // Machine b sends it back to state 5: it is no longer done.
    on(
        &b,
        "update-state",
        &["y", "force", "5", "--reason", "the AMI was deleted"],
    )
    .ok();
    // Machine a's cache still says completed; the archive asks the remote first.
    let r = on(
        &a,
        "monitor",
        &["archive", "--completed-before", "0s", "--json"],
    )
    .ok()
    .json();
    assert_eq!(r["archived"], serde_json::json!([]), "{r}");
    assert_eq!(r["matched"], 0, "the pulled copy is not completed: {r}");
    assert!(!env
        .path("remote")
        .join("archive")
        .join("builds")
        .join("y.json")
        .exists());
    let j = on(&a, "check-state", &["y", "--json", "--history"]).json();
    assert_eq!(j["status"], "pending", "{j}");
}

#[test]
fn an_archived_id_cannot_gain_a_second_lineage() {
    let env = Env::new();
    let r1 = format!("file://{}", env.path("r1").display());
    let r2 = format!("file://{}", env.path("r2").display());
    completed(&env, "x");
    archive_json(&env, &r1);
    // Another database made its own x and shared it through another remote.
    let other = env.path("other.db");
    let mut c = env.command_on("init-state", &other);
    c.args(["x", "--cloud", "gcp", "--image", "other"]);
    env.run_with(&mut c, None).ok();
    let mut c = env.command_on("sync-cloud", &other);
    c.args(["--remote", &r2, "push", "x"]);
    env.run_with(&mut c, None).ok();
    // Pulling it here, beside the archive record of our x, is refused.
    let r = env.run("sync-cloud", &["--remote", &r2, "pull", "x"]);
    assert_eq!(r.code, exit::CONFLICT, "{}", r.stderr);
    assert!(r.stderr.contains("archived"), "{}", r.stderr);
    let j = env.run("check-state", &["x", "--json"]).json();
    assert_eq!(j["error"]["kind"], "archived", "nothing was written: {j}");
    // Our x comes back whole.
    env.run("monitor", &["unarchive", "x", "--remote", &r1])
        .ok();
    assert_eq!(
        env.run("check-state", &["x", "--json"]).json()["cloud"],
        "aws"
    );
}

#[test]
fn a_stale_archive_object_of_the_same_build_is_replaced_by_the_newer_copy() {
    let env = Env::new();
    let remote = format!("file://{}", env.path("remote").display());
    completed(&env, "x");
    assert_eq!(
        archive_json(&env, &remote)["archived"],
        serde_json::json!(["x"])
    );
    env.run("monitor", &["unarchive", "x", "--remote", &remote])
        .ok();
    env.run("update-state", &["x", "meta", "note=after the archive"])
        .ok();
    let serial = env.run("check-state", &["x", "--json"]).json()["serial"].clone();
    // The archive holds the older copy of this very build: the newer one replaces it.
    let r = archive_json(&env, &remote);
    assert_eq!(r["archived"], serde_json::json!(["x"]), "{r}");
    env.run("monitor", &["unarchive", "x", "--remote", &remote])
        .ok();
    let j = env.run("check-state", &["x", "--json"]).json();
    assert_eq!(
        (j["serial"].clone(), j["metadata"]["note"].clone()),
        (serial, "after the archive".into()),
        "{j}"
    );
}

#[test]
fn an_archive_whose_times_were_edited_is_not_brought_back() {
    let env = Env::new();
    let remote = format!("file://{}", env.path("remote").display());
    completed(&env, "x");
    archive_json(&env, &remote);
    let object = env
        .path("remote")
        .join("archive")
        .join("builds")
        .join("x.json");
    let mut snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&object).unwrap()).unwrap();
    let last = snap["events"].as_array().unwrap().len() - 1;
    snap["events"][last]["at"] = "2000-01-01T00:00:00.000Z".into();
    std::fs::write(&object, serde_json::to_vec(&snap).unwrap()).unwrap();
    let r = env.run("monitor", &["unarchive", "x", "--remote", &remote]);
    assert_eq!(r.code, exit::INVALID_SNAPSHOT, "{}", r.stderr);
    assert!(r.stderr.contains("never runs backwards"), "{}", r.stderr);
    // Nothing was written: it stays archived.
    let j = env.run("check-state", &["x", "--json"]).json();
    assert_eq!(j["error"]["kind"], "archived", "{j}");
}

#[test]
fn unarchive_beside_another_build_of_the_same_name_says_what_to_do() {
    let env = Env::new();
    let remote = format!("file://{}", env.path("remote").display());
    completed(&env, "x");
    archive_json(&env, &remote);
    // Another database has its own x.
    let other = env.path("other.db");
    let mut c = env.command_on("init-state", &other);
    c.args(["x", "--cloud", "gcp", "--image", "other"]);
    env.run_with(&mut c, None).ok();
    let mut c = env.command_on("monitor", &other);
    c.args(["unarchive", "x", "--remote", &remote]);
    let r = env.run_with(&mut c, None);
    assert_eq!(r.code, exit::DIVERGED, "{}", r.stderr);
    assert!(
        r.stderr.contains("holds another build named 'x'"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--db OTHER.db"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("sync-cloud"),
        "advice that does not touch the archive: {}",
        r.stderr
    );
    // The archive is as it was: the database that archived it brings it back.
    env.run("monitor", &["unarchive", "x", "--remote", &remote])
        .ok();
}
