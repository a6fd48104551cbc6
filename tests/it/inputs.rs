//! Issue 16: a completed state stays done only while its inputs and its result hold.
//! A real plan with declared inputs and verify/requires commands, driven through the
//! commands as a pipeline drives them: edits make the right state stale (the file named),
//! a failed verify is drift, a failed prerequisite blocks without using an attempt, and
//! force, force --all and reset are recorded with who and why; also through a file://
//! remote, judged from a second machine's database.

use crate::util::Env;
use serde_json::Value;

const PLAN: &str = r#"
name = "image-with-inputs"

[[state]]
id = 0
name = "init"
expected = "1m"

[[state]]
id = 10
name = "base"
expected = "1m"
inputs = { files = ["base/*.ks"] }

[[state]]
id = 20
name = "ansible-users"
expected = "1m"
inputs = { files = ["ansible/roles/users/**"], env = ["IMAGE_VERSION"], meta = ["git_sha"], values = ["rhel9"] }
verify = "test -f users-built"

[[state]]
id = 30
name = "publish"
expected = "1m"
requires = "test -n \"$PUBLISH_TOKEN\" || { echo 'no PUBLISH_TOKEN in the environment' >&2; exit 3; }"
"#;

fn setup() -> Env {
    let e = Env::new();
    std::fs::create_dir_all(e.path("ansible/roles/users/tasks")).unwrap();
    std::fs::create_dir_all(e.path("base")).unwrap();
    e.write("ansible/roles/users/tasks/main.yml", "- name: users\n");
    e.write("ansible/roles/users/defaults.yml", "users: [ops]\n");
    e.write("base/rhel9.ks", "lang en_US\n");
    e.write("plan.toml", PLAN);
    e.run(
        "init-state",
        &[
            "img-1",
            "--cloud",
            "aws",
            "--image",
            "rhel9",
            "--plan",
            "plan.toml",
            "--meta",
            "git_sha=abc123",
        ],
    )
    .ok();
    e
}

/// run-state with IMAGE_VERSION (an input of state 20) set as a pipeline would.
fn run_state(e: &Env, args: &[&str], version: &str) -> crate::util::Run {
    e.run_with(
        e.command("run-state")
            .args(args)
            .env("IMAGE_VERSION", version),
        None,
    )
}

fn check(e: &Env, args: &[&str], version: &str) -> Value {
    let r = e.run_with(
        e.command("check-state")
            .arg("img-1")
            .arg("--json")
            .args(args)
            .env("IMAGE_VERSION", version),
        None,
    );
    assert!(r.code == 0 || (10..=13).contains(&r.code), "{}", r.stderr);
    r.json()
}

fn kinds(v: &Value) -> Vec<String> {
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Build states 10 and 20 (state 20 leaves the file its verify looks for).
fn build_to_20(e: &Env) {
    run_state(e, &["img-1", "10", "--", "true"], "9.4").ok();
    run_state(e, &["img-1", "20", "--", "touch", "users-built"], "9.4").ok();
}

#[test]
fn an_edited_input_reruns_its_state_and_names_the_file() {
    let e = setup();
    build_to_20(&e);
    // Unchanged: no rerun.
    let d = check(&e, &[], "9.4");
    assert_eq!(d["decision"], "resume");
    assert_eq!(d["next_state"], 30);
    assert_eq!(d["stale"], serde_json::json!([]));

    // Edit the users role: state 20 reruns, and the file is named.
    e.write(
        "ansible/roles/users/tasks/main.yml",
        "- name: users, edited\n",
    );
    let d = check(&e, &[], "9.4");
    assert_eq!(d["decision"], "rerun", "{d}");
    assert_eq!(d["next_state"], 20);
    assert_eq!(d["exit_code"], 0);
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("state 20 ansible-users: ansible/roles/users/tasks/main.yml changed"),
        "{reason}"
    );
    assert_eq!(d["stale"][0]["kind"], "changed");
    assert_eq!(
        d["stale"][0]["reasons"],
        serde_json::json!(["ansible/roles/users/tasks/main.yml changed"])
    );
    // --no-inputs reports the recorded state only.
    let d = check(&e, &["--no-inputs"], "9.4");
    assert_eq!(d["decision"], "resume");

    // The environment variable is an input too (its value is never stored).
    e.write("ansible/roles/users/tasks/main.yml", "- name: users\n");
    assert_eq!(check(&e, &[], "9.4")["decision"], "resume");
    let d = check(&e, &[], "9.5");
    assert_eq!(
        d["stale"][0]["reasons"],
        serde_json::json!(["environment variable IMAGE_VERSION changed"])
    );
    let all = std::fs::read(&e.db).unwrap();
    assert!(
        !all.windows(3).any(|w| w == b"9.4"),
        "a variable's value reached the database"
    );

    // An earlier state's input: it and every completed state after it are stale.
    e.write("base/rhel9.ks", "lang de_DE\n");
    let d = check(&e, &[], "9.4");
    assert_eq!(d["next_state"], 10);
    assert_eq!(
        d["stale"][0]["reasons"],
        serde_json::json!(["base/rhel9.ks changed"])
    );
    assert_eq!(d["stale"][1]["state"], 20);
    assert_eq!(d["stale"][1]["kind"], "after");

    // run-state --next reruns state 10, recording why, then runs on normally.
    run_state(&e, &["img-1", "--next", "--", "true"], "9.4").ok();
    let h = e.state("img-1");
    let rerun = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ev| ev["kind"] == "rerun")
        .expect("a rerun event")
        .clone();
    assert_eq!(rerun["state"], 10);
    assert!(rerun["message"]
        .as_str()
        .unwrap()
        .contains("base/rhel9.ks changed"));
    let d = check(&e, &[], "9.4");
    assert_eq!(
        (d["decision"].as_str(), d["next_state"].as_u64()),
        (Some("resume"), Some(20))
    );
    assert_eq!(d["stale"], serde_json::json!([]));
}

#[test]
fn a_failed_verify_is_drift_and_its_state_reruns() {
    let e = setup();
    build_to_20(&e);
    let ok = e.run_with(
        e.command("check-state")
            .args(["img-1", "--verify"])
            .env("IMAGE_VERSION", "9.4"),
        None,
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stderr
            .contains("verify state 20 (ansible-users): passed"),
        "{}",
        ok.stderr
    );
    assert!(kinds(&e.state("img-1")).contains(&"verified".to_string()));
    // monitor status shows when each build was last verified.
    let rows = e.run("monitor", &["status", "--json"]).ok().json();
    assert_eq!(rows[0]["build_id"], "img-1");
    assert!(rows[0]["verified_seconds_ago"].as_u64().is_some(), "{rows}");
    let table = e.run("monitor", &["status"]).ok().stdout;
    assert!(
        table.lines().next().unwrap().contains("verified"),
        "{table}"
    );

    // Reality changed under the recorded state.
    std::fs::remove_file(e.path("users-built")).unwrap();
    let d = check(&e, &["--verify"], "9.4");
    assert_eq!(d["decision"], "rerun");
    assert_eq!(d["next_state"], 20);
    assert_eq!(d["stale"][0]["kind"], "drifted");
    let h = e.state("img-1");
    let drift = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|ev| ev["kind"] == "drift")
        .expect("a drift event")
        .clone();
    assert_eq!(drift["state"], 20);
    assert!(drift["message"]
        .as_str()
        .unwrap()
        .contains("exited with code 1"));
    // Without --verify the recorded drift still counts.
    assert_eq!(check(&e, &[], "9.4")["decision"], "rerun");
    // The plan view says so.
    let plan = check(&e, &["--plan"], "9.4");
    let row = |id: u64| {
        plan["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(row(10)["status"], "done");
    assert_eq!(row(20)["status"], "drifted");
    assert_eq!(row(30)["status"], "pending");
    // Rerunning fixes it.
    run_state(
        &e,
        &["img-1", "--next", "--", "touch", "users-built"],
        "9.4",
    )
    .ok();
    assert_eq!(check(&e, &["--verify"], "9.4")["next_state"], 30);
}

#[test]
fn a_failed_prerequisite_blocks_without_using_an_attempt() {
    let e = setup();
    build_to_20(&e);
    let r = run_state(&e, &["img-1", "30", "--", "touch", "published"], "9.4").code(13);
    assert!(r.stderr.contains("no PUBLISH_TOKEN"), "{}", r.stderr);
    assert!(!e.path("published").exists(), "the state's command ran");
    let d = e.state("img-1");
    assert_eq!(d["status"], "blocked");
    assert_eq!(d["last_category"], "prerequisite");
    assert_eq!(d["attempt"], 0);
    let last = d["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "prerequisite");
    assert_eq!(last["attempt"], Value::Null);
    assert!(d["reason"].as_str().unwrap().contains("prerequisite"));
    // A person fixes it: the first real attempt is attempt 1.
    e.run(
        "update-state",
        &["img-1", "retry", "30", "--reason", "token added"],
    )
    .ok();
    e.run_with(
        e.command("run-state")
            .args(["img-1", "30", "--", "touch", "published"])
            .env("PUBLISH_TOKEN", "t0ken"),
        None,
    )
    .ok();
    let d = e.state("img-1");
    assert_eq!(d["status"], "completed");
    let complete = d["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (complete["kind"].as_str(), complete["attempt"].as_u64()),
        (Some("complete"), Some(1))
    );
}

#[test]
fn force_force_all_and_reset_are_recorded_with_who_and_why() {
    let e = setup();
    build_to_20(&e);
    e.run(
        "update-state",
        &[
            "img-1",
            "force",
            "20",
            "--reason",
            "users role fixed upstream",
        ],
    )
    .ok();
    let d = check(&e, &[], "9.4");
    assert_eq!(
        (d["decision"].as_str(), d["next_state"].as_u64()),
        (Some("resume"), Some(20))
    );
    let plan = check(&e, &["--plan"], "9.4");
    assert_eq!(plan["states"][2]["status"], "forced");
    assert!(plan["states"][2]["why"]
        .as_str()
        .unwrap()
        .contains("users role fixed upstream"));
    assert_eq!(plan["states"][1]["status"], "done");

    // Forcing a state that has not run is refused, and writes nothing.
    let serial = e.state("img-1")["serial"].clone();
    let r = e.run("update-state", &["img-1", "force", "30", "--reason", "x"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("has not run yet"), "{}", r.stderr);
    assert_eq!(e.state("img-1")["serial"], serial);

    run_state(&e, &["img-1", "20", "--", "touch", "users-built"], "9.4").ok();
    e.run(
        "update-state",
        &["img-1", "force", "--all", "--reason", "new base image"],
    )
    .ok();
    let d = check(&e, &[], "9.4");
    assert_eq!(d["next_state"], 10);
    assert_eq!(d["current_state"], 0);

    e.run(
        "update-state",
        &["img-1", "reset", "--reason", "start over"],
    )
    .ok();
    let d = e.state("img-1");
    assert_eq!(d["epoch"], 2);
    let h = d["history"].as_array().unwrap();
    for (kind, why) in [("force", "new base image"), ("reset", "start over")] {
        let ev = h.iter().rev().find(|ev| ev["kind"] == kind).unwrap();
        assert_eq!(ev["message"], why);
        assert_eq!(ev["actor"]["tool"], "update-state");
    }
    assert!(h
        .iter()
        .any(|ev| ev["kind"] == "force" && ev["state"] == 20));
    // History is kept: the completions of the first epoch are still there.
    assert!(h.iter().filter(|ev| ev["kind"] == "complete").count() >= 3);
    let text = e.run("check-state", &["img-1"]).ok();
    assert!(text.stdout.contains("epoch:    2"), "{}", text.stdout);
}

#[test]
fn the_same_through_a_file_remote_seen_from_another_machine() {
    let e = setup();
    let remote = format!("file://{}", e.path("remote").display());
    std::fs::create_dir_all(e.path("remote")).unwrap();
    e.run("sync-cloud", &["--remote", &remote, "push", "img-1"])
        .ok();
    let on = |db: &str, tool: &str, args: &[&str]| {
        let mut c = e.command_on(tool, std::path::Path::new(db));
        c.args(["--remote", &remote])
            .args(args)
            .env("IMAGE_VERSION", "9.4");
        e.run_with(&mut c, None)
    };
    let db1 = e.path("worker1.db").display().to_string();
    let db2 = e.path("cron.db").display().to_string();
    on(&db1, "run-state", &["img-1", "10", "--", "true"]).ok();
    on(&db1, "run-state", &["img-1", "20", "--", "true"]).ok();
    // Another machine, with a database of its own, sees the recorded inputs.
    let d = on(&db2, "check-state", &["img-1", "--json"]).ok().json();
    assert_eq!(d["next_state"], 30);
    e.write("ansible/roles/users/defaults.yml", "users: [ops, dev]\n");
    let d = on(&db2, "check-state", &["img-1", "--json"]).ok().json();
    assert_eq!(d["decision"], "rerun");
    assert_eq!(
        d["stale"][0]["reasons"],
        serde_json::json!(["ansible/roles/users/defaults.yml changed"])
    );
    // It reruns there, and the first worker sees that.
    on(&db2, "run-state", &["img-1", "--next", "--", "true"]).ok();
    let d = on(&db1, "check-state", &["img-1", "--json", "--history"])
        .ok()
        .json();
    assert_eq!(d["next_state"], 30);
    assert!(kinds(&d).contains(&"rerun".to_string()));
}

#[test]
fn a_plan_whose_inputs_leave_the_root_is_refused() {
    let e = Env::new();
    e.write(
        "bad.toml",
        "name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\ninputs = { files = [\"../../etc/**\"] }\n",
    );
    let r = e.run(
        "init-state",
        &["b", "--cloud", "aws", "--image", "x", "--plan", "bad.toml"],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("state[0] (id 0).inputs.files[0]"),
        "{}",
        r.stderr
    );
    e.write(
        "typo.toml",
        "name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\ninputs = { file = [\"x\"] }\n",
    );
    let r = e.run(
        "init-state",
        &["b", "--cloud", "aws", "--image", "x", "--plan", "typo.toml"],
    );
    assert_eq!(r.code, 6);
    assert!(r.stderr.contains("unknown field `file`"), "{}", r.stderr);
}

#[test]
fn a_stray_name_that_is_not_utf8_beside_the_inputs_is_none_of_ours() {
    use std::os::unix::ffi::OsStrExt;
    let e = setup();
    build_to_20(&e);
    // Under the glob's base (base/*.ks), but not a match: it blocks nothing.
    let stray = e
        .path("base")
        .join(std::ffi::OsStr::from_bytes(b"notes-\xff.txt"));
    std::fs::write(&stray, "x").unwrap();
    let v = check(&e, &[], "9.4");
    assert_eq!(v["stale"], serde_json::json!([]), "{v}");
    // A match whose name cannot be recorded is refused, naming it.
    let matched = e
        .path("base")
        .join(std::ffi::OsStr::from_bytes(b"k-\xff.ks"));
    std::fs::write(&matched, "x").unwrap();
    let r = e.run_with(
        e.command("check-state")
            .args(["img-1", "--json"])
            .env("IMAGE_VERSION", "9.4"),
        None,
    );
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(
        r.stderr.contains("k-\u{fffd}.ks") && r.stderr.contains("not UTF-8"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_kernel_file_linked_into_the_inputs_cannot_hang_hashing() {
    // /proc/kmsg is a regular file of size 0 whose read waits for the next kernel
    // message; a link to it among the inputs once hung every decision.
    assert!(
        std::fs::File::open("/proc/kmsg").is_ok(),
        "this test needs /proc/kmsg readable (Linux, as root)"
    );
    let e = setup();
    build_to_20(&e);
    std::os::unix::fs::symlink("/proc/kmsg", e.path("ansible/roles/users/kmsg")).unwrap();
    let mut child = e
        .command("check-state")
        .args(["img-1", "--json"])
        .env("IMAGE_VERSION", "9.4")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let begun = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if begun.elapsed().as_secs() >= 20 {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("check-state hung hashing a link to /proc/kmsg");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // The link is an input (a link to a file counts as the file, read to the size it
    // has): new since state 20 completed, so state 20 reruns.
    assert_eq!(status.code(), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "rerun", "{v}");
    assert_eq!(v["next_state"], 20, "{v}");
}

#[test]
fn a_verify_that_cannot_run_is_not_drift_a_drift_alerts_once_and_a_pass_clears_it() {
    let e = Env::new();
    e.write(
        "plan.toml",
        "name = \"v\"\n[[state]]\nid = 5\nname = \"image\"\nexpected = \"1m\"\nverify = \"./imgcheck\"\n",
    );
    e.run(
        "init-state",
        &["b", "--cloud", "aws", "--image", "x", "--plan", "plan.toml"],
    )
    .ok();
    e.run("update-state", &["b", "start", "5"]).ok();
    e.run("update-state", &["b", "complete", "5"]).ok();
    let verify = |e: &Env| -> Value {
        let r = e.run("check-state", &["b", "--verify", "--json"]);
        assert!(r.code == 0 || r.code == 10, "exit {}: {}", r.code, r.stderr);
        r.json()
    };
    let drift_alerts = |e: &Env| -> i64 {
        rusqlite::Connection::open(&e.db)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM alerts WHERE kind = 'drift'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // The tool is not installed (exit 127): nothing is known, so nothing reruns.
    let v = verify(&e);
    assert_eq!(
        (v["decision"].as_str(), v["stale"].clone()),
        (Some("completed"), serde_json::json!([])),
        "{v}"
    );
    assert_eq!(kinds(&e.state("b")).last().unwrap(), "unverified");
    assert_eq!(drift_alerts(&e), 0);
    e.run("monitor", &["check"]).code(0);

    // Installed, and the image is gone: drift, once, however often cron looks.
    let tool = e.write(
        "imgcheck",
        "#!/bin/sh\necho 'image ami-1 not found' >&2\nexit 1\n",
    );
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&tool)
        .status()
        .unwrap();
    for _ in 0..2 {
        let v = verify(&e);
        assert_eq!(v["decision"], "rerun", "{v}");
        assert_eq!(v["stale"][0]["kind"], "drifted", "{v}");
    }
    assert_eq!(drift_alerts(&e), 1, "a drift alerts once");
    let r = e.run("monitor", &["check", "--json"]).code(13);
    let found = r.json();
    assert_eq!(found[0]["what"], "drifted", "{found}");
    assert!(
        found[0]["reason"]
            .as_str()
            .unwrap()
            .contains("image ami-1 not found"),
        "{found}"
    );

    // Reality is back: a pass clears the drift.
    e.write("imgcheck", "#!/bin/sh\nexit 0\n");
    let v = verify(&e);
    assert_eq!(
        (v["decision"].as_str(), v["stale"].clone()),
        (Some("completed"), serde_json::json!([])),
        "{v}"
    );
    e.run("monitor", &["check"]).code(0);
    // A new drift after the pass is news: it alerts again.
    e.write("imgcheck", "#!/bin/sh\nexit 1\n");
    verify(&e);
    assert_eq!(drift_alerts(&e), 2);
}
