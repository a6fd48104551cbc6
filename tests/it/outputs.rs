//! Issue 27, outputs: what a state produced, recorded with `update-state output` (also
//! from inside run-state's command), seen by later states, and superseded when the
//! state that produced it runs again.

use serde_json::{json, Value};

use crate::util::{events, Env};

fn outputs(env: &Env, id: &str) -> Value {
    env.state(id)["outputs"].clone()
}

/// The values alone, by key.
fn values(env: &Env, id: &str) -> Value {
    let all = outputs(env, id);
    let map = all.as_object().expect("outputs is an object");
    Value::Object(
        map.iter()
            .map(|(k, o)| (k.clone(), o["value"].clone()))
            .collect(),
    )
}

/// A state's command records outputs from inside run-state (with only the variables
/// run-state sets), and the next state's command gets them as BUILDSTATE_OUTPUT_<KEY>,
/// byte for byte; check-state and resume-metadata show them.
#[test]
fn a_states_command_records_outputs_and_the_next_state_sees_them() {
    let env = Env::new();
    env.init("img-1");
    let big = "x".repeat(60 * 1024);
    env.write("big.txt", &big);
    let record = r#"update-state "$BUILDSTATE_BUILD_ID" output --attempt "$BUILDSTATE_ATTEMPT" ami_id=ami-0abc "note=it's a test" "big=$(cat big.txt)""#;
    let path = format!(
        "{}:{}",
        crate::util::bin("update-state").parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let mut c = env.command("run-state");
    c.env("PATH", &path)
        .args(["img-1", "5", "--", "sh", "-c", record]);
    env.run_with(&mut c, None).ok();
    let mut c = env.command("run-state");
    c.env("PATH", &path).args([
        "img-1",
        "10",
        "--",
        "sh",
        "-c",
        "printf %s \"$BUILDSTATE_OUTPUT_note\" > note.seen; printf %s \"$BUILDSTATE_OUTPUT_big\" > big.seen",
    ]);
    env.run_with(&mut c, None).ok();
    assert_eq!(
        std::fs::read_to_string(env.path("note.seen")).unwrap(),
        "it's a test"
    );
    assert_eq!(std::fs::read_to_string(env.path("big.seen")).unwrap(), big);

    let all = outputs(&env, "img-1");
    assert_eq!(
        (
            &all["ami_id"]["value"],
            &all["ami_id"]["state"],
            &all["ami_id"]["attempt"]
        ),
        (&json!("ami-0abc"), &json!(5), &json!(1))
    );
    // Recorded while state 5 ran: between its start and its completion.
    let j = env.state("img-1");
    let at = |kind: &str| {
        events(&j, kind)
            .iter()
            .find(|e| e["state"] == 5)
            .map(|e| e["at"].as_str().unwrap().to_string())
            .unwrap()
    };
    let recorded = all["ami_id"]["at"].as_str().unwrap().to_string();
    assert!(at("start") <= recorded && recorded <= at("complete"));

    let out = env.path("out");
    env.run("check-state", &["img-1", "--output", out.to_str().unwrap()]);
    let sourced = std::process::Command::new("sh")
        .arg("-c")
        .arg(". ./resume-metadata && printf %s \"$BUILDSTATE_OUTPUT_note\"")
        .current_dir(&out)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(sourced.stdout).unwrap(), "it's a test");
    let human = env.run("check-state", &["img-1"]);
    assert!(
        human.stdout.contains("output:   ami_id=ami-0abc (state 5)"),
        "{}",
        human.stdout
    );
}

/// A new attempt of the state, a force or rerun from it or before it, a rollback below
/// it and a reset supersede its outputs; the history keeps every one.
#[test]
fn outputs_are_superseded_when_their_state_runs_again() {
    let env = Env::new();
    env.init("img-2");
    let us = |args: &[&str]| {
        env.update("img-2", args).ok();
    };
    us(&["start", "5"]);
    us(&["output", "a=1"]);
    us(&["complete", "5"]);
    us(&["start", "10"]);
    us(&["output", "b=2", "a=from-10"]);
    us(&["complete", "10"]);
    // A later state's value of a key wins while both are current.
    assert_eq!(values(&env, "img-2"), json!({"a": "from-10", "b": "2"}));
    us(&["force", "10", "--reason", "validation changed"]);
    assert_eq!(values(&env, "img-2"), json!({"a": "1"}));
    us(&["start", "10"]);
    us(&["output", "b=3"]);
    us(&["complete", "10"]);
    us(&["start", "15"]);
    us(&["output", "c=1"]);
    us(&[
        "fail",
        "15",
        "--error",
        "flaky mirror",
        "--category",
        "transient",
    ]);
    // The failed attempt's outputs stay current until the state starts again...
    assert_eq!(values(&env, "img-2"), json!({"a": "1", "b": "3", "c": "1"}));
    us(&["retry", "15", "--reason", "mirror is back"]);
    us(&["start", "15"]);
    // ...which supersedes them: attempt 2 makes its own.
    assert_eq!(values(&env, "img-2"), json!({"a": "1", "b": "3"}));
    us(&["output", "c=2"]);
    assert_eq!(outputs(&env, "img-2")["c"]["attempt"], 2);
    us(&["complete", "15"]);
    us(&["rollback", "--to", "10", "--reason", "state 15 broke sshd"]);
    assert_eq!(values(&env, "img-2"), json!({"a": "1", "b": "3"}));
    // An output for a state that already ran (no attempt of it running): allowed.
    us(&["output", "--state", "5", "d=late"]);
    assert_eq!(outputs(&env, "img-2")["d"]["attempt"], Value::Null);
    us(&["reset", "--reason", "new base image"]);
    assert_eq!(values(&env, "img-2"), json!({}));
    let j = env.state("img-2");
    let recorded: Vec<&str> = events(&j, "output")
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        recorded,
        ["a=1", "a=from-10\nb=2", "b=3", "c=1", "c=2", "d=late"]
    );
    assert_eq!(
        events(&j, "output")[1]["outputs"],
        json!({"a": "from-10", "b": "2"})
    );
}

/// What cannot be an output is refused with the exit code docs/exit-codes.md gives, a
/// message that says what to do, and nothing written.
#[test]
fn a_bad_output_is_refused_and_writes_nothing() {
    use buildstate::exit;
    let env = Env::new();
    env.init("img-3");
    let refused = |args: &[&str], code: i32, says: &str| {
        let mut full = vec!["img-3"];
        full.extend_from_slice(args);
        let before = env.state("img-3")["serial"].clone();
        let r = env.run("update-state", &full).code(code);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert_eq!(env.state("img-3")["serial"], before, "{args:?} wrote");
    };
    refused(&["output", "a=1"], exit::REFUSED, "name the state");
    env.run("update-state", &["img-3", "start", "5"]).ok();
    let too_big = format!("k={}", "x".repeat(64 * 1024 + 1));
    refused(
        &["output", &too_big],
        exit::INVALID_INPUT,
        "more than the 65536",
    );
    refused(
        &["output", "1a=x"],
        exit::INVALID_INPUT,
        "invalid output key '1a'",
    );
    refused(
        &["output", "a=1", "a=2"],
        exit::INVALID_INPUT,
        "given twice",
    );
    refused(
        &["output", "noequals"],
        exit::INVALID_INPUT,
        "write it as KEY=VALUE",
    );
    refused(
        &["output", "key=AKIAIOSFODNN7EXAMPLE"],
        exit::INVALID_INPUT,
        "looks like a secret",
    );
    refused(
        &["output", "--state", "20", "a=1"],
        exit::REFUSED,
        "has not run",
    );
    refused(&["output", "--state", "7", "a=1"], exit::REFUSED, "7");
    refused(
        &["--owner", "someone-else", "output", "a=1"],
        exit::BUSY,
        "if you are that worker, pass --owner",
    );
    refused(
        &["output", "--attempt", "2", "a=1"],
        exit::LEASE_LOST,
        "no longer current",
    );
    let bad = env.write("manifest.json", r#"{"builds": "nope"}"#);
    refused(
        &["output", "--packer-manifest", bad.to_str().unwrap()],
        exit::INVALID_INPUT,
        "is not a Packer manifest",
    );
    // The secret never reached the database either.
    assert!(!crate::util::file_contains(
        &env.db,
        b"AKIAIOSFODNN7EXAMPLE"
    ));
    env.run(
        "update-state",
        &["img-3", "cancel", "--reason", "not needed"],
    )
    .ok();
    refused(
        &["output", "--state", "5", "a=1"],
        exit::REFUSED,
        "cancelled",
    );
}

/// Packer's manifest.json: the builds of its last run become outputs (earlier runs in
/// the file are history), prefixed by the build's name, and unprefixed for one build.
#[test]
fn a_packer_manifest_becomes_outputs() {
    let env = Env::new();
    env.init("img-4");
    env.run("update-state", &["img-4", "start", "5"]).ok();
    let manifest = env.write(
        "manifest.json",
        r#"{
  "builds": [
    {"name": "old", "builder_type": "amazon-ebs", "build_time": 1, "files": null,
     "artifact_id": "us-east-1:ami-0old", "packer_run_uuid": "run-1", "custom_data": null},
    {"name": "rhel9-east", "builder_type": "amazon-ebs", "build_time": 2, "files": null,
     "artifact_id": "us-east-1:ami-0abc", "packer_run_uuid": "run-2",
     "custom_data": {"git_sha": "1a2b3c"}}
  ],
  "last_run_uuid": "run-2"
}"#,
    );
    let r = env
        .run(
            "update-state",
            &[
                "img-4",
                "output",
                "--packer-manifest",
                manifest.to_str().unwrap(),
                "extra=1",
            ],
        )
        .ok();
    assert!(
        r.stdout.contains("recorded 7 output(s) and 1 resource(s)"),
        "{}",
        r.stdout
    );
    assert_eq!(
        values(&env, "img-4"),
        json!({
            "artifact_id": "us-east-1:ami-0abc",
            "builder_type": "amazon-ebs",
            "git_sha": "1a2b3c",
            "rhel9_east_artifact_id": "us-east-1:ami-0abc",
            "rhel9_east_builder_type": "amazon-ebs",
            "rhel9_east_git_sha": "1a2b3c",
            "extra": "1",
        })
    );
}

/// In remote mode outputs travel in the snapshot (schema version 6): a second machine
/// sees them, and its run-state's command gets them.
#[test]
fn outputs_travel_through_a_folder_remote() {
    let env = Env::new();
    let url = format!("file://{}/remote", env.dir.path().display());
    let other = env.path("other.db");
    let on = |db: &std::path::Path, name: &str, args: &[&str]| {
        let mut c = env.command_on(name, db);
        c.arg("--remote").arg(&url).args(args);
        env.run_with(&mut c, None).ok()
    };
    on(
        &env.db,
        "init-state",
        &["img-5", "--cloud", "aws", "--image", "rhel9"],
    );
    on(&env.db, "update-state", &["img-5", "start", "5"]);
    on(
        &env.db,
        "update-state",
        &["img-5", "output", "ami_id=ami-0abc"],
    );
    on(&env.db, "update-state", &["img-5", "complete", "5"]);
    let snap: Value =
        serde_json::from_slice(&std::fs::read(env.path("remote/builds/img-5.json")).unwrap())
            .unwrap();
    assert_eq!(snap["schema_version"], 6);
    on(
        &other,
        "run-state",
        &[
            "img-5",
            "10",
            "--",
            "sh",
            "-c",
            "printf %s \"$BUILDSTATE_OUTPUT_ami_id\" > seen",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(env.path("seen")).unwrap(),
        "ami-0abc"
    );
}

/// Debian's packer (1.6.x) builds with the `file` builder and the `manifest`
/// post-processor under run-state; the state's command ingests the manifest, and the
/// next state's command sees the outputs of the last run only.
#[test]
fn a_real_packer_build_under_run_state_hands_its_manifest_to_the_next_state() {
    let packer = std::process::Command::new("packer")
        .arg("version")
        .output()
        .expect("packer (Debian's packer package) is installed by scripts/test");
    assert!(packer.status.success());
    let env = Env::new();
    env.init("img-pk");
    env.write(
        "image.json",
        r#"{
  "builders": [{"type": "file", "name": "rhel9-east", "content": "{{user `version`}}", "target": "image.raw"}],
  "variables": {"version": "1"},
  "post-processors": [{"type": "manifest", "output": "manifest.json", "custom_data": {"version": "{{user `version`}}"}}]
}"#,
    );
    let path = format!(
        "{}:{}",
        crate::util::bin("update-state").parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    // An earlier run in the same manifest: history, not this build's output.
    let mut c = std::process::Command::new("packer");
    c.args(["build", "-var", "version=0", "image.json"])
        .current_dir(env.dir.path())
        .env("CHECKPOINT_DISABLE", "1");
    assert!(c.output().unwrap().status.success());
    let build = r#"packer build -var version=2 image.json >/dev/null && update-state "$BUILDSTATE_BUILD_ID" output --attempt "$BUILDSTATE_ATTEMPT" --packer-manifest manifest.json --cleanup 'rm "$BUILDSTATE_RESOURCE_PROP_files"'"#;
    let mut c = env.command("run-state");
    c.env("PATH", &path)
        .env("CHECKPOINT_DISABLE", "1")
        .args(["img-pk", "5", "--", "sh", "-c", build]);
    env.run_with(&mut c, None).ok();
    let mut c = env.command("run-state");
    c.env("PATH", &path).args([
        "img-pk",
        "10",
        "--",
        "sh",
        "-c",
        "printf '%s %s %s' \"$BUILDSTATE_OUTPUT_rhel9_east_artifact_id\" \"$BUILDSTATE_OUTPUT_builder_type\" \"$BUILDSTATE_OUTPUT_version\" > seen",
    ]);
    env.run_with(&mut c, None).ok();
    assert_eq!(
        std::fs::read_to_string(env.path("seen")).unwrap(),
        "File file 2"
    );
    assert_eq!(std::fs::read_to_string(env.path("image.raw")).unwrap(), "2");
    // The artifact is a resource of state 5, with its file; a cancel cleans it up.
    let ledger = env
        .run("check-state", &["img-pk", "--resources", "--json"])
        .ok()
        .json()["resources"]
        .clone();
    assert_eq!(ledger.as_array().unwrap().len(), 1, "{ledger}");
    assert_eq!(
        (
            ledger[0]["type"].as_str(),
            ledger[0]["id"].as_str(),
            ledger[0]["state"].as_u64(),
            ledger[0]["props"]["name"].as_str(),
            ledger[0]["props"]["files"].as_str()
        ),
        (
            Some("file"),
            Some("File"),
            Some(5),
            Some("rhel9-east"),
            Some("image.raw")
        ),
        "{ledger}"
    );
    env.update("img-pk", &["cancel", "--reason", "test", "--cleanup"])
        .ok();
    assert!(!env.path("image.raw").exists());
}

/// A build's current outputs fit in a command's environment: a write that would bring
/// them over 1 MiB is refused and writes nothing, and the next state's command still
/// starts with all of those recorded.
#[test]
fn the_current_outputs_are_bounded_in_all() {
    let env = Env::new();
    env.init("img-big");
    env.update("img-big", &["start", "5"]).ok();
    let big = "x".repeat(buildstate::outputs::MAX_VALUE);
    for i in 0..15 {
        env.update("img-big", &["output", &format!("part{i}={big}")])
            .ok();
    }
    let serial = env.state("img-big")["serial"].clone();
    let r = env
        .update("img-big", &["output", &format!("part15={big}")])
        .code(buildstate::exit::INVALID_INPUT);
    assert!(r.stderr.contains("more than the 1048576"), "{}", r.stderr);
    assert_eq!(
        env.state("img-big")["serial"],
        serial,
        "nothing was written"
    );
    // Replacing a value stays within the bound.
    env.update("img-big", &["output", &format!("part0={big}")])
        .ok();
    env.update("img-big", &["complete", "5"]).ok();
    let r = env.run(
        "run-state",
        &[
            "img-big",
            "10",
            "--",
            "sh",
            "-c",
            "env | grep -c '^BUILDSTATE_OUTPUT_part' > seen",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(env.path("seen")).unwrap().trim(),
        "15"
    );
}
