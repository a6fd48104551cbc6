//! Issue 29, builds that depend on builds (first part): a plan's state waits for another
//! build's state (`after`), locally and through a remote; run-state waits for it within
//! --max-wait; a build that would wait for itself is refused at init.

use serde_json::Value;

use crate::util::Env;

/// States 0 and 5 of its own; state 10 waits for the base image build of the same image
/// to complete its state 5.
const CHILD: &str = r#"
name = "app-image"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 5
name = "app-layer"
expected = "1m"
[[state]]
id = 10
name = "publish"
expected = "1m"
after = ["base-{image}:5"]
"#;

/// init-state ID --cloud aws --image IMAGE EXTRA...
fn init(env: &Env, id: &str, image: &str, extra: &[&str]) -> crate::util::Run {
    let mut args = vec![id, "--cloud", "aws", "--image", image];
    args.extend_from_slice(extra);
    env.run("init-state", &args)
}

fn decide(env: &Env, id: &str) -> (i32, Value) {
    let r = env.run("check-state", &[id, "--json"]);
    (r.code, r.json())
}

#[test]
fn a_state_waits_until_the_parent_has_completed_its_state() {
    let env = Env::new();
    let plan = env.write("child.toml", CHILD);
    init(&env, "app-1", "rhel9", &["--plan", plan.to_str().unwrap()]).ok();
    // State 5 waits for nobody.
    assert_eq!(decide(&env, "app-1").0, 0);
    env.update("app-1", &["start", "5"]).ok();
    env.update("app-1", &["complete", "5"]).ok();
    // State 10 waits for base-rhel9, which does not exist yet.
    let (code, j) = decide(&env, "app-1");
    assert_eq!(
        (code, j["decision"].as_str()),
        (buildstate::exit::WAIT, Some("wait")),
        "{j}"
    );
    assert_eq!(j["next_state"], 10);
    let w = &j["waiting_for"][0];
    assert_eq!(
        (
            w["build_id"].as_str(),
            w["state"].as_u64(),
            w["status"].as_str()
        ),
        (Some("base-rhel9"), Some(5), Some("missing")),
        "{j}"
    );
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("base-rhel9 does not exist yet"),
        "{j}"
    );
    // It exists, and has not got there yet.
    env.init("base-rhel9");
    let (code, j) = decide(&env, "app-1");
    assert_eq!(code, buildstate::exit::WAIT);
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("has not completed state 5 (kickstart)"),
        "{j}"
    );
    // run-state waits for it within --max-wait, then says what it waits for.
    let r = env.run(
        "run-state",
        &["app-1", "--next", "--max-wait", "1s", "--", "true"],
    );
    assert_eq!(r.code, buildstate::exit::WAIT, "{}", r.stderr);
    assert!(r.stderr.contains("waits for another build"), "{}", r.stderr);
    assert_eq!(env.state("app-1")["current_state"], 5, "nothing ran");
    // A worker waiting with a longer --max-wait goes ahead once the parent is done.
    let mut worker = env.command("run-state");
    worker
        .args([
            "app-1",
            "--next",
            "--max-wait",
            "60s",
            "--",
            "sh",
            "-c",
            "date +%s%N > ran",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = std::time::Instant::now();
    let child = worker.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !env.path("ran").exists(),
        "state 10 ran before its parent's state 5"
    );
    env.update("base-rhel9", &["start", "5"]).ok();
    env.update("base-rhel9", &["complete", "5"]).ok();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.path("ran").exists() && started.elapsed().as_millis() >= 1500);
    assert_eq!(env.state("app-1")["current_state"], 10);
}

#[test]
fn a_build_that_would_wait_for_itself_is_refused_at_init() {
    let env = Env::new();
    let plan = env.write(
        "peer.toml",
        r#"
name = "peers"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 5
name = "bake"
expected = "1m"
after = ["{peer}:5"]
"#,
    );
    let p = plan.to_str().unwrap();
    let peered = |id: &str, peer: &str| {
        init(
            &env,
            id,
            "rhel9",
            &["--plan", p, "--meta", &format!("peer={peer}")],
        )
    };
    // Itself, directly.
    let r = peered("solo", "solo").code(buildstate::exit::INVALID_INPUT);
    assert!(
        r.stderr
            .contains("would wait for itself: solo waits for solo"),
        "{}",
        r.stderr
    );
    // A waits for B, which does not exist yet: allowed (it may be created later).
    peered("a", "b").ok();
    // B waiting for A closes the circle: refused, nothing written.
    let r = peered("b", "a").code(buildstate::exit::INVALID_INPUT);
    assert!(
        r.stderr.contains("b waits for a waits for b"),
        "{}",
        r.stderr
    );
    assert_eq!(
        env.run("check-state", &["b", "--json"]).json()["exists"],
        false
    );
    // A template naming a key the build lacks is refused, naming it.
    let r = init(&env, "c", "rhel9", &["--plan", p]).code(buildstate::exit::INVALID_INPUT);
    assert!(r.stderr.contains("{peer}"), "{}", r.stderr);
    // An after that is not BUILD:STATE is an invalid plan.
    let bad = env.write(
        "bad.toml",
        &std::fs::read_to_string(&plan)
            .unwrap()
            .replace("{peer}:5", "base"),
    );
    let r = init(&env, "d", "rhel9", &["--plan", bad.to_str().unwrap()])
        .code(buildstate::exit::INVALID_PLAN);
    assert!(
        r.stderr.contains("after[0]") && r.stderr.contains("BUILD:STATE"),
        "{}",
        r.stderr
    );
}

/// Two machines through a folder remote: the child on machine B waits for the parent
/// written on machine A, read from the remote; its snapshot is version 8.
#[test]
fn the_parent_is_read_from_the_remote() {
    let env = Env::new();
    let url = format!("file://{}/remote", env.dir.path().display());
    let b_db = env.path("machine-b.db");
    let on = |db: &std::path::Path, name: &str, args: &[&str]| {
        let mut c = env.command_on(name, db);
        c.arg("--remote").arg(&url).args(args);
        env.run_with(&mut c, None)
    };
    let plan = env.write("child.toml", CHILD);
    on(
        &env.db,
        "init-state",
        &["base-rhel9", "--cloud", "aws", "--image", "rhel9"],
    )
    .ok();
    on(
        &b_db,
        "init-state",
        &[
            "app-2",
            "--cloud",
            "aws",
            "--image",
            "rhel9",
            "--plan",
            plan.to_str().unwrap(),
        ],
    )
    .ok();
    on(&b_db, "update-state", &["app-2", "start", "5"]).ok();
    on(&b_db, "update-state", &["app-2", "complete", "5"]).ok();
    let r = on(&b_db, "check-state", &["app-2", "--json"]);
    assert_eq!(r.code, buildstate::exit::WAIT, "{}", r.stdout);
    assert_eq!(r.json()["waiting_for"][0]["status"], "pending");
    on(&env.db, "update-state", &["base-rhel9", "start", "5"]).ok();
    on(&env.db, "update-state", &["base-rhel9", "complete", "5"]).ok();
    let r = on(&b_db, "check-state", &["app-2", "--json"]).ok();
    assert_eq!(r.json()["decision"], "resume");
    let snap: Value =
        serde_json::from_slice(&std::fs::read(env.path("remote/builds/app-2.json")).unwrap())
            .unwrap();
    assert_eq!(snap["schema_version"], 8);
    let base: Value =
        serde_json::from_slice(&std::fs::read(env.path("remote/builds/base-rhel9.json")).unwrap())
            .unwrap();
    assert_eq!(
        base["schema_version"], 1,
        "a build whose plan waits for nobody stays readable by older machines"
    );
    // The parent's copy leaves the remote (archived or deleted elsewhere): the child is
    // judged by what machine B last saw of it, not refused.
    std::fs::remove_file(env.path("remote/builds/base-rhel9.json")).unwrap();
    let r = on(&b_db, "check-state", &["app-2", "--json"]).ok();
    assert_eq!(r.json()["decision"], "resume");
}

/// `init-state --after BUILD:STATE`: every state of the build waits for that parent's
/// state. The parent must exist (an id typed by hand is more often a typo); a cycle
/// through a plan's after is refused too.
#[test]
fn init_after_makes_the_whole_build_wait_for_an_existing_parent() {
    let env = Env::new();
    env.init("base-9");
    let r = init(&env, "app-9", "rhel9", &["--after", "base-8:5"])
        .code(buildstate::exit::INVALID_INPUT);
    assert!(
        r.stderr.contains("there is no build 'base-8'") && r.stderr.contains("base-9"),
        "{}",
        r.stderr
    );
    assert_eq!(
        env.run("check-state", &["app-9", "--json"]).json()["exists"],
        false
    );
    init(&env, "app-9", "rhel9", &["--after", "base-9:5"]).ok();
    let (code, j) = decide(&env, "app-9");
    assert_eq!(
        (code, j["next_state"].as_u64()),
        (buildstate::exit::WAIT, Some(5)),
        "{j}"
    );
    assert_eq!(j["waiting_for"][0]["build_id"], "base-9");
    let history = env
        .run("check-state", &["app-9", "--json", "--history"])
        .json();
    assert_eq!(
        history["history"][0]["after"],
        serde_json::json!(["base-9:5"])
    );
    env.update("base-9", &["start", "5"]).ok();
    env.update("base-9", &["complete", "5"]).ok();
    assert_eq!(decide(&env, "app-9").1["decision"], "resume");
    // A template with braces is for plans: refused here.
    let r = init(&env, "app-10", "rhel9", &["--after", "base-{image}:5"])
        .code(buildstate::exit::INVALID_INPUT);
    assert!(r.stderr.contains("templates are for plans"), "{}", r.stderr);
    // p3's plan waits for p4 (not there yet: allowed); p4 --after p3 closes the circle.
    let plan = env.write(
        "peer.toml",
        "name = \"peers\"\n[[state]]\nid = 0\nname = \"init\"\nexpected = \"1s\"\n[[state]]\nid = 5\nname = \"bake\"\nexpected = \"1m\"\nafter = [\"{peer}:5\"]\n",
    );
    init(
        &env,
        "p3",
        "rhel9",
        &["--plan", plan.to_str().unwrap(), "--meta", "peer=p4"],
    )
    .ok();
    let r = init(&env, "p4", "rhel9", &["--after", "p3:5"]).code(buildstate::exit::INVALID_INPUT);
    assert!(
        r.stderr.contains("p4 waits for p3 waits for p4"),
        "{}",
        r.stderr
    );
}

/// `monitor status --tree`: each build under the builds it waits for, with whether the
/// dependency holds; --json gives every node with its parents and children, and a
/// parent that does not exist yet as `missing`.
#[test]
fn monitor_status_tree_draws_the_graph() {
    let env = Env::new();
    let plan = env.write("child.toml", CHILD);
    env.init("base-rhel9");
    env.init("base-ubuntu");
    env.update("base-rhel9", &["start", "5"]).ok();
    env.update("base-rhel9", &["complete", "5"]).ok();
    init(
        &env,
        "app-1",
        "rhel9",
        &["--plan", plan.to_str().unwrap(), "--after", "base-ubuntu:5"],
    )
    .ok();
    init(&env, "app-2", "centos", &["--plan", plan.to_str().unwrap()]).ok();
    let nodes = env
        .run("monitor", &["status", "--tree", "--json"])
        .ok()
        .json();
    let node = |id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["build_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id}: {nodes}"))
    };
    let app1 = node("app-1");
    let edges: Vec<(String, bool)> = app1["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["build_id"].as_str().unwrap().to_string(),
                e["holds"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("base-rhel9".to_string(), true),
            ("base-ubuntu".to_string(), false)
        ],
        "{app1}"
    );
    assert_eq!(node("base-centos")["status"], "missing");
    assert_eq!(
        node("base-centos")["children"],
        serde_json::json!(["app-2"])
    );
    assert_eq!(node("base-rhel9")["children"], serde_json::json!(["app-1"]));
    let text = env.run("monitor", &["status", "--tree"]).ok().stdout;
    assert!(
        text.contains("base-rhel9 (pending, last completed state 5)\n└─ app-1"),
        "{text}"
    );
    assert!(
        text.contains("app-1 (pending, last completed state 0) waits for base-ubuntu:5 (not yet)"),
        "{text}"
    );
    assert!(text.contains("base-centos (missing)\n└─ app-2"), "{text}");
}

/// Careless entries: a state the parent's plan does not have is refused at init (it
/// would wait for ever); the same parent given twice is waited for once; bounds hold.
#[test]
fn careless_after_entries_are_refused_or_collapsed() {
    let env = Env::new();
    env.init("base");
    let r = init(&env, "w7", "rhel9", &["--after", "base:7"]).code(buildstate::exit::INVALID_INPUT);
    assert!(
        r.stderr.contains("has no state 7") && r.stderr.contains("0, 5, 10"),
        "{}",
        r.stderr
    );
    for bad in [
        "base:-1",
        "base:101",
        "base:NaN",
        "base:",
        ":5",
        "base",
        "base:5:5",
        "base/../x:5",
    ] {
        init(&env, "w8", "rhel9", &["--after", bad]).code(buildstate::exit::INVALID_INPUT);
    }
    let many: Vec<&str> = std::iter::repeat_n(["--after", "base:5"], 33)
        .flatten()
        .collect();
    init(&env, "w9", "rhel9", &many).code(buildstate::exit::INVALID_INPUT);
    assert_eq!(
        env.run("check-state", &["w9", "--json"]).json()["exists"],
        false
    );
    init(
        &env,
        "dup",
        "rhel9",
        &["--after", "base:5", "--after", "base:5"],
    )
    .ok();
    let (code, j) = decide(&env, "dup");
    assert_eq!(code, buildstate::exit::WAIT);
    assert_eq!(j["waiting_for"].as_array().unwrap().len(), 1, "{j}");
}

/// A state that consumes the base image build's `ami_id` (`inputs.builds`).
const CONSUMER: &str = r#"
name = "app-on-base"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 10
name = "app-layer"
expected = "1m"
after = ["base-{image}:5"]
inputs = { builds = ["base-{image}:ami_id"] }
[[state]]
id = 20
name = "publish"
expected = "1m"
"#;

/// Run state 5 of `base` to completion, recording `ami_id`.
fn publish_base(env: &Env, base: &str, ami: &str) {
    env.update(base, &["start", "5"]).ok();
    env.update(base, &["output", &format!("ami_id={ami}")]).ok();
    env.update(base, &["complete", "5"]).ok();
}

#[test]
fn a_rebuilt_parent_output_makes_the_consuming_state_stale() {
    let env = Env::new();
    env.init("base-rhel9");
    publish_base(&env, "base-rhel9", "ami-0aaa1111");
    let plan = env.write("consumer.toml", CONSUMER);
    init(&env, "app-7", "rhel9", &["--plan", plan.to_str().unwrap()]).ok();
    for s in ["10", "20"] {
        env.update("app-7", &["start", s]).ok();
        env.update("app-7", &["complete", s]).ok();
    }
    // The completion recorded the value it was built on.
    let h = env.run("check-state", &["app-7", "--json", "--history"]);
    let done = h.json()["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "complete" && e["state"] == 10)
        .cloned()
        .unwrap();
    assert_eq!(
        done["inputs"]["builds"]["base-rhel9:ami_id"], "ami-0aaa1111",
        "{done}"
    );
    let (code, j) = decide(&env, "app-7");
    assert_eq!(
        (code, j["decision"].as_str()),
        (buildstate::exit::COMPLETED, Some("completed")),
        "{j}"
    );
    // The base is rebuilt with a new image: the app is stale from state 10, naming the
    // parent, the output and both values.
    env.update("base-rhel9", &["force", "5", "--reason", "role edit"])
        .ok();
    publish_base(&env, "base-rhel9", "ami-0bbb2222");
    let (code, j) = decide(&env, "app-7");
    assert_eq!((code, j["decision"].as_str()), (0, Some("rerun")), "{j}");
    assert_eq!(j["next_state"], 10, "{j}");
    let why = j["stale"][0]["reasons"][0].as_str().unwrap();
    for part in ["base-rhel9", "ami_id", "ami-0aaa1111", "ami-0bbb2222"] {
        assert!(why.contains(part), "{part} in {why}");
    }
    assert_eq!(j["stale"][1]["kind"], "after", "{j}");
    // Rerunning records the new value; then nothing is stale.
    env.update("app-7", &["start", "10"]).ok();
    env.update("app-7", &["complete", "10"]).ok();
    env.update("app-7", &["start", "20"]).ok();
    env.update("app-7", &["complete", "20"]).ok();
    let (_, j) = decide(&env, "app-7");
    assert_eq!(j["decision"], "completed", "{j}");
    // A plan entry that is not BUILD:KEY is refused (exit 6) with the entry named.
    let bad = env.write(
        "bad.toml",
        &CONSUMER.replace("base-{image}:ami_id", "base-{image}"),
    );
    let r = init(&env, "app-8", "rhel9", &["--plan", bad.to_str().unwrap()]);
    assert_eq!(r.code, buildstate::exit::INVALID_PLAN, "{}", r.stderr);
    assert!(r.stderr.contains("inputs.builds[0]"), "{}", r.stderr);
}

/// The `revoked` alerts in the outbox.
fn revoked_alerts(env: &Env) -> Vec<Value> {
    let db = rusqlite::Connection::open(&env.db).unwrap();
    let mut q = db
        .prepare("SELECT payload FROM alerts WHERE kind = 'revoked' ORDER BY id")
        .unwrap();
    q.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|p| serde_json::from_str(&p.unwrap()).unwrap())
        .collect()
}

#[test]
fn a_revoked_parent_makes_its_consumers_stale_alerts_them_and_holds_its_waiters() {
    let env = Env::new();
    env.init("base-rhel9");
    publish_base(&env, "base-rhel9", "ami-0aaa1111");
    let plan = env.write("consumer.toml", CONSUMER);
    let plan = plan.to_str().unwrap();
    // app-1 consumed the image; app-2 has not run state 10 yet; app-3 consumed it and
    // was rebuilt on another value since (a base output of a different key would not
    // count either).
    init(&env, "app-1", "rhel9", &["--plan", plan]).ok();
    init(&env, "app-2", "rhel9", &["--plan", plan]).ok();
    env.update("app-1", &["start", "10"]).ok();
    env.update("app-1", &["complete", "10"]).ok();
    // Nothing to revoke on a build with no outputs: refused, nothing written.
    let r = env.update("app-1", &["revoke", "--reason", "nothing"]);
    assert_eq!(r.code, buildstate::exit::REFUSED, "{}", r.stderr);
    assert!(r.stderr.contains("no current outputs"), "{}", r.stderr);
    let r = env.update("base-rhel9", &["revoke", "--reason", ""]);
    assert_ne!(r.code, 0, "a revocation needs a reason");
    let serial = |id: &str| env.state(id)["serial"].as_u64().unwrap();
    let before = serial("base-rhel9");
    let r = env
        .update(
            "base-rhel9",
            &["revoke", "--reason", "CVE-2026-1234 in the kernel"],
        )
        .ok();
    assert!(
        r.stdout.contains("1 build(s) consumed them") && r.stdout.contains("app-1 at state 10"),
        "{}",
        r.stdout
    );
    assert_eq!(serial("base-rhel9"), before + 1);
    // The consumer is stale from state 10, naming the value and that it is gone, and
    // waits: its parent has no outputs until it makes new ones.
    let (code, j) = decide(&env, "app-1");
    assert_eq!(
        (code, j["decision"].as_str()),
        (buildstate::exit::WAIT, Some("wait")),
        "{j}"
    );
    assert_eq!(j["waiting_for"][0]["status"], "revoked", "{j}");
    assert!(
        j["reason"].as_str().unwrap().contains("CVE-2026-1234"),
        "{j}"
    );
    let why = j["stale"][0]["reasons"][0].as_str().unwrap();
    assert!(
        why.contains("'ami-0aaa1111'") && why.ends_with("it is none now"),
        "{why}"
    );
    // A build that had not consumed it waits too, and is not alerted.
    let (code, _) = decide(&env, "app-2");
    assert_eq!(code, buildstate::exit::WAIT);
    // The graph says so too.
    let tree = env
        .run("monitor", &["status", "--tree", "--json"])
        .ok()
        .json();
    let app2 = tree
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["build_id"] == "app-2")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            app2["parents"][0]["holds"].as_bool(),
            app2["parents"][0]["status"].as_str()
        ),
        (Some(false), Some("revoked")),
        "{app2}"
    );
    let alerts = revoked_alerts(&env);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        (
            a["build_id"].as_str(),
            a["parent"].as_str(),
            a["state"].as_u64()
        ),
        (Some("app-1"), Some("base-rhel9"), Some(10)),
        "{a}"
    );
    let reason = a["reason"].as_str().unwrap();
    assert!(
        reason.contains("CVE-2026-1234") && reason.contains("ami_id 'ami-0aaa1111'"),
        "{reason}"
    );
    // The history says who revoked and why.
    let h = env.run("check-state", &["base-rhel9", "--json", "--history"]);
    let last = h.json()["history"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["message"].as_str()),
        (Some("revoke"), Some("CVE-2026-1234 in the kernel")),
        "{last}"
    );
    // The parent makes a new image: the waiters go ahead, the consumer reruns from 10.
    env.update("base-rhel9", &["force", "5", "--reason", "patched kernel"])
        .ok();
    publish_base(&env, "base-rhel9", "ami-0ccc3333");
    let (code, j) = decide(&env, "app-1");
    assert_eq!((code, j["decision"].as_str()), (0, Some("rerun")), "{j}");
    assert_eq!(j["next_state"], 10);
    assert_eq!(decide(&env, "app-2").1["decision"], "resume");
    // A second revocation alerts again (another write), the first is not repeated.
    env.update("app-1", &["start", "10"]).ok();
    env.update("app-1", &["complete", "10"]).ok();
    env.update("base-rhel9", &["revoke", "--reason", "bad again"])
        .ok();
    assert_eq!(revoked_alerts(&env).len(), 2);
}

#[test]
fn an_archived_parent_is_judged_by_its_archive_record() {
    let env = Env::new();
    let remote = format!("file://{}/archive", env.dir.path().display());
    env.init("base-rhel9");
    publish_base(&env, "base-rhel9", "ami-0aaa1111");
    let plan = env.write("consumer.toml", CONSUMER);
    let plan = plan.to_str().unwrap();
    init(&env, "app-1", "rhel9", &["--plan", plan]).ok();
    env.update("app-1", &["start", "10"]).ok();
    env.update("app-1", &["complete", "10"]).ok();
    // The base completes its plan and leaves for the archive.
    let view = env.run("check-state", &["base-rhel9", "--plan", "--json"]);
    let pending: Vec<String> = view.json()["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "pending")
        .map(|s| s["state"].to_string())
        .collect();
    for s in &pending {
        env.update("base-rhel9", &["start", s]).ok();
        env.update("base-rhel9", &["complete", s]).ok();
    }
    env.run(
        "monitor",
        &["archive", "--completed-before", "0s", "--remote", &remote],
    )
    .ok();
    assert_eq!(
        env.run("check-state", &["base-rhel9"]).code,
        buildstate::exit::UNKNOWN_BUILD
    );
    // The consumer is not stale (its parent's outputs are those it consumed), and a
    // build that waits for the archived parent goes ahead.
    let (code, j) = decide(&env, "app-1");
    assert_eq!(
        (code, j["decision"].as_str(), j["next_state"].as_u64()),
        (0, Some("resume"), Some(20)),
        "{j}"
    );
    assert_eq!(j["stale"], serde_json::json!([]), "{j}");
    init(&env, "app-2", "rhel9", &["--plan", plan]).ok();
    let (code, j) = decide(&env, "app-2");
    assert_eq!((code, j["decision"].as_str()), (0, Some("resume")), "{j}");
    assert_eq!(j["next_state"], 10, "{j}");
    // The graph judges it the same way.
    let tree = env
        .run("monitor", &["status", "--tree", "--json"])
        .ok()
        .json();
    let app2 = tree
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["build_id"] == "app-2")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            app2["parents"][0]["holds"].as_bool(),
            app2["parents"][0]["status"].as_str()
        ),
        (Some(true), Some("archived completed")),
        "{app2}"
    );
}

#[test]
fn a_parent_revoked_while_the_child_runs_alerts_it_and_the_child_reruns_on_new_outputs() {
    let env = Env::new();
    env.init("base-rhel9");
    publish_base(&env, "base-rhel9", "ami-0aaa1111");
    let plan = env.write("consumer.toml", CONSUMER);
    init(&env, "app-1", "rhel9", &["--plan", plan.to_str().unwrap()]).ok();
    // State 10 runs for a while on ami-0aaa1111 (hashed before its command starts).
    let mut worker = env.command("run-state");
    worker
        .args([
            "app-1",
            "--next",
            "--",
            "sh",
            "-c",
            "touch started; sleep 2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = worker.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !env.path("started").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "state 10 never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = env
        .update("base-rhel9", &["revoke", "--reason", "bad kernel"])
        .ok();
    assert!(
        r.stdout.contains("app-1 at state 10 (app-layer), running"),
        "{}",
        r.stdout
    );
    let alerts = revoked_alerts(&env);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("is running on ami_id 'ami-0aaa1111', it will be stale when it ends"),
        "{}",
        alerts[0]
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It completed on what it ran with, which is gone: stale, and waiting for new ones.
    let (code, j) = decide(&env, "app-1");
    assert_eq!(
        (code, j["decision"].as_str()),
        (buildstate::exit::WAIT, Some("wait")),
        "{j}"
    );
    assert!(
        j["stale"][0]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("it was 'ami-0aaa1111' when this state completed, it is none now"),
        "{j}"
    );
    env.update("base-rhel9", &["force", "5", "--reason", "patched"])
        .ok();
    publish_base(&env, "base-rhel9", "ami-0bbb2222");
    let (_, j) = decide(&env, "app-1");
    assert_eq!(
        (j["decision"].as_str(), j["next_state"].as_u64()),
        (Some("rerun"), Some(10)),
        "{j}"
    );
}
