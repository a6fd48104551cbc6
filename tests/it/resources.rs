//! Issue 27, the resource ledger on the command line: what is refused, what an orphan
//! is and is not, and what travels through a remote. (tests/python/test_resources.py
//! drives it against moto's EC2 API with the aws CLI.)

use serde_json::Value;

use crate::util::Env;

fn ledger(env: &Env, id: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![id, "--resources", "--json"];
    args.extend_from_slice(extra);
    env.run("check-state", &args).ok().json()["resources"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_bad_resource_is_refused_and_writes_nothing() {
    use buildstate::exit;
    let env = Env::new();
    env.init("img-1");
    let refused = |args: &[&str], code: i32, says: &str| {
        let mut full = vec!["img-1", "resource"];
        full.extend_from_slice(args);
        let before = env.state("img-1")["serial"].clone();
        let r = env.run("update-state", &full).code(code);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert_eq!(env.state("img-1")["serial"], before, "{args:?} wrote");
    };
    refused(
        &["add", "key-pair", "kp-1"],
        exit::REFUSED,
        "name the state",
    );
    env.run("update-state", &["img-1", "start", "5"]).ok();
    refused(
        &["add", "key-pair", "kp\n1"],
        exit::INVALID_INPUT,
        "control characters",
    );
    refused(
        &["add", "key-pair", "kp-1", "--cleanup", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY aws ec2 delete-key-pair"],
        exit::INVALID_INPUT,
        "secret",
    );
    refused(
        &["add", "key-pair", "kp-1", "--prop", "1x=y"],
        exit::INVALID_INPUT,
        "invalid property key",
    );
    refused(
        &["delete", "key-pair", "nope"],
        exit::REFUSED,
        "no resource key-pair nope",
    );
    refused(
        &["add", "key-pair", "kp-1", "--attempt", "2"],
        exit::LEASE_LOST,
        "no longer current",
    );
    assert!(!crate::util::file_contains(&env.db, b"wJalrXUtnFEMI"));
    // Another writer than the lease holder: recorded, as the running attempt's.
    env.update(
        "img-1",
        &[
            "--owner",
            "someone-else",
            "resource",
            "add",
            "key-pair",
            "kp-other",
        ],
    )
    .ok();
    let other = ledger(&env, "img-1", &[]);
    assert_eq!(
        (other[0]["id"].as_str(), other[0]["attempt"].as_u64()),
        (Some("kp-other"), Some(1))
    );
    env.run(
        "update-state",
        &["img-1", "resource", "add", "key-pair", "kp-1"],
    )
    .ok();
    env.run(
        "update-state",
        &["img-1", "resource", "delete", "key-pair", "kp-1"],
    )
    .ok();
    refused(
        &["delete", "key-pair", "kp-1"],
        exit::REFUSED,
        "already deleted",
    );
}

/// What an orphan is: a force, a rollback below, a reset, a cancel, or a failed build
/// past the window; not a resource of a live lease, and not one of a pending build.
#[test]
fn orphans_are_what_nobody_will_use() {
    let env = Env::new();
    env.init("img-2");
    let us = |args: &[&str]| {
        env.update("img-2", args).ok();
    };
    us(&["start", "5"]);
    us(&["resource", "add", "image", "ami-5", "--cleanup", "true"]);
    us(&["complete", "5"]);
    us(&["start", "10"]);
    us(&["resource", "add", "instance", "i-10", "--cleanup", "true"]);
    // update-state's start holds a lease until the state's timeout: nothing is an
    // orphan while it lives, however old.
    let orphaned = |extra: &[&str]| -> Vec<(String, Option<String>)> {
        ledger(&env, "img-2", extra)
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["orphaned"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    assert!(orphaned(&["--older-than", "0s"])
        .iter()
        .all(|(_, w)| w.is_none()));
    us(&["fail", "10", "--error", "boom", "--category", "persistent"]);
    // Blocked: within the window its resources stay; past it they are orphans.
    assert!(orphaned(&[]).iter().all(|(_, w)| w.is_none()));
    let now = orphaned(&["--older-than", "0s"]);
    // Every resource of the build: a blocked build's image costs money too.
    assert!(
        now.iter()
            .all(|(_, w)| w.as_deref().unwrap().contains("has been blocked for")),
        "{now:?}"
    );
    us(&["force", "10", "--reason", "new instance type"]);
    let now = orphaned(&[]);
    assert!(
        now[1]
            .1
            .as_deref()
            .unwrap()
            .contains("sent to run again from state 10"),
        "{now:?}"
    );
    assert_eq!(
        now[0].1, None,
        "a force of 10 leaves state 5's image: {now:?}"
    );
    us(&["rollback", "--to", "0", "--reason", "bad kickstart"]);
    let now = orphaned(&[]);
    assert!(
        now[0]
            .1
            .as_deref()
            .unwrap()
            .contains("rolled back to state 0"),
        "{now:?}"
    );
    let dry = env
        .run("monitor", &["gc", "--dry-run", "--json"])
        .ok()
        .json();
    let outcomes: Vec<(&str, &str)> = dry["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    // Newest first.
    assert_eq!(
        outcomes,
        [("i-10", "would_delete"), ("ami-5", "would_delete")]
    );
    let metrics = env.run("monitor", &["metrics"]).ok().stdout;
    for line in [
        "buildstate_resources{status=\"orphaned\"} 2",
        "buildstate_resources{status=\"present\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

/// The ledger travels in the snapshot (version 7); a collector in remote mode refuses
/// to run cleanup commands from unsigned snapshots.
#[test]
fn resources_travel_and_gc_needs_signed_snapshots_in_remote_mode() {
    let env = Env::new();
    let url = format!("file://{}/remote", env.dir.path().display());
    let on = |db: &std::path::Path, name: &str, args: &[&str]| {
        let mut c = env.command_on(name, db);
        c.arg("--remote").arg(&url).args(args);
        env.run_with(&mut c, None)
    };
    on(
        &env.db,
        "init-state",
        &["img-3", "--cloud", "aws", "--image", "rhel9"],
    )
    .ok();
    on(&env.db, "update-state", &["img-3", "start", "5"]).ok();
    on(
        &env.db,
        "update-state",
        &[
            "img-3",
            "resource",
            "add",
            "key-pair",
            "kp-3",
            "--cleanup",
            "touch cleaned",
        ],
    )
    .ok();
    on(
        &env.db,
        "update-state",
        &["img-3", "cancel", "--reason", "done"],
    )
    .ok();
    let snap: Value =
        serde_json::from_slice(&std::fs::read(env.path("remote/builds/img-3.json")).unwrap())
            .unwrap();
    assert_eq!(snap["schema_version"], 7);
    let cron = env.path("cron.db");
    let r = on(&cron, "monitor", &["gc"]).code(buildstate::exit::INVALID_INPUT);
    assert!(r.stderr.contains("BUILDSTATE_SNAPSHOT_KEY"), "{}", r.stderr);
    assert!(!env.path("cleaned").exists());
    let dry = on(&cron, "monitor", &["gc", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(dry["resources"][0]["why"], "the build was cancelled");
}

/// `check-state --resources --refresh` runs the checks older than --max-age; a missing
/// resource of a completed state is drift (issue 19): the state runs again.
#[test]
fn a_missing_resource_of_a_completed_state_is_drift() {
    let env = Env::new();
    env.init("img-4");
    let us = |args: &[&str]| {
        env.update("img-4", args).ok();
    };
    us(&["start", "5"]);
    std::fs::write(env.path("ami-5"), "").unwrap();
    us(&[
        "resource",
        "add",
        "image",
        "ami-5",
        "--check",
        "test -e ami-5",
        "--cleanup",
        "true",
    ]);
    us(&["complete", "5"]);
    env.run("check-state", &["img-4", "--resources", "--refresh"])
        .ok();
    let first = ledger(&env, "img-4", &[]);
    assert_eq!(first[0]["status"], "present");
    // Checked just now: not again within --max-age.
    std::fs::remove_file(env.path("ami-5")).unwrap();
    env.run("check-state", &["img-4", "--resources", "--refresh"])
        .ok();
    assert_eq!(ledger(&env, "img-4", &[])[0]["status"], "present");
    let r = env
        .run(
            "check-state",
            &["img-4", "--resources", "--refresh", "--max-age", "0s"],
        )
        .ok();
    assert!(r.stderr.contains("recorded as drift"), "{}", r.stderr);
    assert_eq!(ledger(&env, "img-4", &[])[0]["status"], "missing");
    let j = env.state("img-4");
    let drift = crate::util::events(&j, "drift");
    assert_eq!(drift.len(), 1);
    assert!(
        drift[0]["message"]
            .as_str()
            .unwrap()
            .contains("image ami-5 is missing"),
        "{drift:?}"
    );
    assert_eq!(
        (j["decision"].as_str(), j["next_state"].as_u64()),
        (Some("rerun"), Some(5))
    );
}

/// `reset --cleanup` runs the cleanup of what the old epoch made at once; a failing one
/// exits 23 and is recorded, the reset itself stands.
#[test]
fn reset_cleanup_deletes_what_the_old_epoch_made() {
    let env = Env::new();
    env.init("img-5");
    let us = |args: &[&str]| {
        env.update("img-5", args).ok();
    };
    us(&["start", "5"]);
    std::fs::write(env.path("disk-1"), "").unwrap();
    us(&[
        "resource",
        "add",
        "disk",
        "disk-1",
        "--cleanup",
        "rm disk-1",
    ]);
    us(&[
        "resource",
        "add",
        "disk",
        "stuck",
        "--cleanup",
        "echo 'volume in use' >&2; exit 1",
    ]);
    us(&["complete", "5"]);
    let r = env
        .update(
            "img-5",
            &["reset", "--reason", "new base image", "--cleanup"],
        )
        .code(buildstate::exit::CLEANUP_FAILED);
    assert!(r.stderr.contains("disk disk-1 deleted"), "{}", r.stderr);
    assert!(r.stderr.contains("volume in use"), "{}", r.stderr);
    assert!(!env.path("disk-1").exists());
    assert_eq!(env.state("img-5")["epoch"], 2, "the reset stands");
    let statuses: Vec<String> = ledger(&env, "img-5", &[])
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["deleted", "cleanup_failed"]);
    // The failure alerts once, with the resource and the command's output; the next
    // collection fails again and adds nothing.
    let cleanup_alerts = || -> Vec<Value> {
        let db = rusqlite::Connection::open(&env.db).unwrap();
        let mut q = db
            .prepare("SELECT payload FROM alerts WHERE kind = 'cleanup'")
            .unwrap();
        q.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|p| serde_json::from_str(&p.unwrap()).unwrap())
            .collect()
    };
    let alerts = cleanup_alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (
            alerts[0]["resource_type"].as_str(),
            alerts[0]["resource_id"].as_str()
        ),
        (Some("disk"), Some("stuck"))
    );
    assert!(
        alerts[0]["error_tail"]
            .as_str()
            .unwrap()
            .contains("volume in use"),
        "{}",
        alerts[0]
    );
    env.run(
        "monitor",
        &["gc", "--older-than", "0s", "--retry-delay", "0s"],
    )
    .code(buildstate::exit::CLEANUP_FAILED);
    assert_eq!(cleanup_alerts().len(), 1);
    // monitor status says what is left, and where.
    let rows = env.run("monitor", &["status", "--json"]).ok().json();
    assert_eq!(
        (
            rows[0]["orphaned_resources"].as_u64(),
            rows[0]["cleanup_failed_resources"].as_u64()
        ),
        (Some(1), Some(1)),
        "{rows}"
    );
    let table = env.run("monitor", &["status"]).ok().stdout;
    assert!(
        table.contains(
            "resources: 1 orphaned, 1 of them whose cleanup failed, in 1 build(s) (img-5)"
        ),
        "{table}"
    );
}
