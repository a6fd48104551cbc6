//! The Concourse resource binary as Concourse runs it: the request on stdin, the folder
//! in argv, an empty environment for check and only BUILD_* for in and out.
//! (tests/python/test_concourse.py drives it through concoursetools against moto.)

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::util::strs;

fn step(
    name: &str,
    request: &Value,
    folder: Option<&std::path::Path>,
    build: Option<u32>,
) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_concourse-resource"));
    c.env_clear().arg(name);
    if let Some(f) = folder {
        c.arg(f);
    }
    if let Some(n) = build {
        for (k, v) in [
            ("BUILD_ID", n.to_string()),
            ("BUILD_NAME", n.to_string()),
            ("BUILD_JOB_NAME", "bake".into()),
            ("BUILD_PIPELINE_NAME", "images".into()),
            ("BUILD_TEAM_NAME", "main".into()),
            ("ATC_EXTERNAL_URL", "https://ci.example.com".into()),
        ] {
            c.env(k, v);
        }
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap(),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

/// A put from the folder `work` by Concourse build `build`.
fn put(source: &Value, work: &std::path::Path, build: u32, params: Value) -> (i32, String, String) {
    step(
        "out",
        &json!({"source": source, "params": params}),
        Some(work),
        Some(build),
    )
}

#[test]
fn check_in_out_over_a_folder_remote() {
    let dir = tempfile::tempdir().unwrap();
    let source =
        json!({"remote": format!("file://{}/remote", dir.path().display()), "build_id": "img-1"});
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("out")).unwrap();
    std::fs::write(work.join("out/error.txt"), "validation couldn't log in").unwrap();

    let (code, out, _) = step(
        "check",
        &json!({"source": source, "version": null}),
        None,
        None,
    );
    assert_eq!((code, out.trim()), (0, "[]"));
    let put = |params: Value, build: u32| {
        let (code, out, err) = put(&source, &work, build, params);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("stdout is one JSON document");
        assert!(v["metadata"].is_array());
        v["version"].clone()
    };
    let v1 = put(
        json!({"action": "init", "cloud": "aws", "image": "rhel9"}),
        1,
    );
    assert_eq!(v1, json!({"build_id": "img-1", "serial": "1"}));
    put(json!({"action": "start", "state": 5}), 2);
    // The same job build (the lease holder) completes it; another job build may not.
    let (code, out, err) = step(
        "out",
        &json!({"source": source, "params": {"action": "complete", "state": 5}}),
        Some(&work),
        Some(3),
    );
    assert_eq!((code, out.as_str()), (buildstate::exit::BUSY, ""), "{err}");
    put(json!({"action": "complete", "state": 5}), 2);
    let v4 = put(
        json!({"action": "fail", "state": 10, "error_file": "out/error.txt", "category": "persistent"}),
        4,
    );
    assert_eq!(v4["serial"], "4"); // init, start, complete, fail: the refused complete wrote nothing

    let (code, out, _) = step(
        "check",
        &json!({"source": source, "version": v1}),
        None,
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([v4]));
    let dest = dir.path().join("dest");
    let (code, out, err) = step(
        "in",
        &json!({"source": source, "version": v4}),
        Some(&dest),
        Some(5),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["version"], v4);
    let decision: Value =
        serde_json::from_slice(&std::fs::read(dest.join("decision.json")).unwrap()).unwrap();
    assert_eq!(
        (
            decision["decision"].as_str(),
            decision["last_error"].as_str()
        ),
        (Some("blocked"), Some("validation couldn't log in"))
    );
    let history: Value =
        serde_json::from_slice(&std::fs::read(dest.join("history.json")).unwrap()).unwrap();
    assert_eq!(history[1]["actor"]["context"]["BUILD_JOB_NAME"], "bake");
    assert!(dest.join("snapshot.json").exists() && dest.join("resume-metadata").exists());

    // A destination that is a file, and a blank `owner` param: refused (exit 8), nothing
    // written to the file or the remote.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "keep").unwrap();
    let (code, _, err) = step(
        "in",
        &json!({"source": source, "version": v4}),
        Some(&file),
        Some(6),
    );
    assert_eq!(code, buildstate::exit::INVALID_INPUT, "{err}");
    assert!(err.contains("exists and is not a directory"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    let (code, _, err) = step(
        "out",
        &json!({"source": source, "params": {"action": "retry", "state": 10, "reason": "x", "owner": " "}}),
        Some(&work),
        Some(7),
    );
    assert_eq!(code, buildstate::exit::INVALID_INPUT, "{err}");
    assert!(err.contains("invalid lease owner"), "{err}");
    let (_, out, _) = step(
        "check",
        &json!({"source": source, "version": v4}),
        None,
        None,
    );
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([v4]));
}

/// Issue 16 through the put: inputs recorded on complete (relative to `inputs_root`, a
/// folder of the put), a stale state rerun by `start`, and `force` and `reset`.
#[test]
fn put_records_inputs_reruns_stale_states_and_forces() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("repo/roles/users")).unwrap();
    std::fs::write(work.join("repo/roles/users/main.yml"), "users: [ops]\n").unwrap();
    std::fs::write(
        work.join("plan.toml"),
        "name = \"p\"\n[[state]]\nid = 0\nname = \"init\"\nexpected = \"1m\"\n[[state]]\nid = 10\nname = \"users\"\nexpected = \"1m\"\ninputs = { files = [\"roles/**\"] }\n[[state]]\nid = 20\nname = \"publish\"\nexpected = \"1m\"\n",
    )
    .unwrap();
    let source = json!({
        "remote": format!("file://{}/remote", dir.path().display()),
        "build_id": "img-2",
        "plan": "plan.toml",
    });
    let ok = |params: Value| {
        let (code, out, err) = put(&source, &work, 7, params);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["version"].clone()
    };
    ok(json!({"action": "init", "cloud": "aws", "image": "rhel9"}));
    ok(json!({"action": "start", "state": 10, "inputs_root": "repo"}));
    ok(json!({"action": "complete", "state": 10, "inputs_root": "repo"}));
    std::fs::write(
        work.join("repo/roles/users/main.yml"),
        "users: [ops, dev]\n",
    )
    .unwrap();
    ok(json!({"action": "start", "state": 10, "inputs_root": "repo"}));
    ok(json!({"action": "complete", "state": 10, "inputs_root": "repo"}));
    ok(json!({"action": "force", "state": 10, "reason": "users role fixed upstream"}));
    let last = ok(json!({"action": "reset", "reason": "new base image"}));

    let dest = dir.path().join("dest");
    let (code, _, err) = step(
        "in",
        &json!({"source": source, "version": last}),
        Some(&dest),
        Some(8),
    );
    assert_eq!(code, 0, "{err}");
    let history: Value =
        serde_json::from_slice(&std::fs::read(dest.join("history.json")).unwrap()).unwrap();
    let events = history.as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["init", "start", "complete", "rerun", "start", "complete", "force", "reset"]
    );
    assert_eq!(events[2]["inputs"]["files"].as_object().unwrap().len(), 1);
    assert!(events[3]["message"]
        .as_str()
        .unwrap()
        .contains("roles/users/main.yml changed"));
    assert_eq!(events[6]["message"], "users role fixed upstream");
    assert_eq!(events[6]["actor"]["context"]["BUILD_JOB_NAME"], "bake");

    // Bad params are refused with exit 8, nothing written.
    for (params, says) in [
        (
            json!({"action": "force", "state": 10, "all": true, "reason": "x"}),
            "not both",
        ),
        (
            json!({"action": "force", "reason": "x"}),
            "needs params.state",
        ),
        (
            json!({"action": "complete", "state": 10, "inputs_root": "../.."}),
            "inputs_root",
        ),
    ] {
        let (code, out, err) = put(&source, &work, 7, params);
        assert_eq!((code, out.as_str()), (8, ""), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

/// A put that starts a state runs its `requires` first, as run-state and update-state
/// do: a prerequisite that fails blocks the build (exit 13, recorded, no attempt used).
#[test]
fn put_start_checks_requires() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("plan.toml"),
        "name = \"p\"\n[[state]]\nid = 10\nname = \"bake\"\nexpected = \"1m\"\nrequires = \"echo 'quota exhausted' >&2; exit 1\"\n",
    )
    .unwrap();
    let source = json!({
        "remote": format!("file://{}/remote", dir.path().display()),
        "build_id": "img-3",
        "plan": "plan.toml",
    });
    let init = json!({"action": "init", "cloud": "aws", "image": "rhel9"});
    let (code, _, err) = put(&source, &work, 9, init);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = put(&source, &work, 9, json!({"action": "start", "state": 10}));
    assert_eq!(code, 13, "{out}{err}");
    assert!(err.contains("quota exhausted"), "{err}");
    let (code, out, err) = step(
        "in",
        &json!({"source": source, "version": {"serial": "2", "build_id": "img-3"}}),
        Some(&dir.path().join("dest")),
        Some(10),
    );
    assert_eq!(code, 0, "{out}{err}");
    let history: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dest/history.json")).unwrap())
            .unwrap();
    let kinds = strs(&history, "kind");
    assert!(!kinds.contains(&"start"), "{kinds:?}");
    assert_eq!(kinds.len(), 2, "init and the unmet prerequisite: {kinds:?}");
    // The decision says what to do as a put, as refusals do.
    let decision: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dest/decision.json")).unwrap())
            .unwrap();
    let reason = decision["reason"].as_str().unwrap();
    assert!(
        reason.ends_with("then a put with `params: {action: retry, state: 10, reason: TEXT}`"),
        "{reason}"
    );
    assert!(!reason.contains("update-state"), "{reason}");
}

/// A build created by a put, on a file:// remote in a fresh folder: the folder (kept
/// while it lives), the job's working directory and the resource's source.
fn a_build_on_a_folder_remote(id: &str) -> (tempfile::TempDir, std::path::PathBuf, Value) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let source = json!({
        "remote": format!("file://{}/remote", dir.path().display()),
        "build_id": id,
    });
    let init = json!({"action": "init", "cloud": "aws", "image": "rhel9"});
    let (code, _, err) = put(&source, &work, 9, init);
    assert_eq!(code, 0, "{err}");
    (dir, work, source)
}

/// A refusal says what to do as a put's params, not as a command the job cannot run;
/// the command line says the same in its own syntax.
#[test]
fn a_refused_put_says_what_to_do_as_a_put() {
    let (_dir, work, source) = a_build_on_a_folder_remote("img-4");
    // State 10 before state 5: refused, and the way out is a skip of 5.
    let (code, out, err) = put(&source, &work, 9, json!({"action": "start", "state": 10}));
    assert_eq!(code, buildstate::exit::REFUSED, "{out}{err}");
    assert!(
        err.contains("a put with `params: {action: skip, state: 5, reason: TEXT}`"),
        "{err}"
    );
    assert!(!err.contains("update-state"), "{err}");
    let env = crate::util::Env::new();
    env.init("img-4");
    let r = env
        .run("update-state", &["img-4", "start", "10"])
        .code(buildstate::exit::REFUSED);
    assert!(
        r.stderr
            .contains("`update-state img-4 skip 5 --reason TEXT`"),
        "{}",
        r.stderr
    );
}

/// A put without the reason a decision needs, and a put against another job's live
/// lease, say what to do as a put's params, as the command line says it as flags.
#[test]
fn a_put_missing_a_reason_or_the_lease_says_so_as_params() {
    let (_dir, work, source) = a_build_on_a_folder_remote("img-5");
    let cancel = json!({"action": "cancel", "reason": " "});
    let (code, out, err) = put(&source, &work, 9, cancel);
    assert_eq!(code, buildstate::exit::INVALID_INPUT, "{out}{err}");
    assert!(err.contains("set `reason` in the put's params"), "{err}");
    assert!(!err.contains("--reason"), "{err}");
    let start = json!({"action": "start", "state": 5, "owner": "job-a"});
    let (code, _, err) = put(&source, &work, 9, start);
    assert_eq!(code, 0, "{err}");
    let start = json!({"action": "start", "state": 5, "owner": "job-b"});
    let (code, out, err) = put(&source, &work, 9, start);
    assert_eq!(code, buildstate::exit::BUSY, "{out}{err}");
    assert!(err.contains("is held by job-a"), "{err}");
    assert!(
        err.contains("set `owner` in the put's params to its name"),
        "{err}"
    );
    assert!(!err.contains("--owner"), "{err}");
}

/// Issue 27 through the resource: a put records what the running state made (also from
/// a Packer manifest in the put's folder), and `in` writes the current values as
/// outputs.json for the next job's tasks.
#[test]
fn a_put_records_outputs_and_in_writes_them() {
    let (dir, work, source) = a_build_on_a_folder_remote("img-6");
    let (code, _, err) = put(&source, &work, 10, json!({"action": "start", "state": 5}));
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        work.join("manifest.json"),
        r#"{"builds": [{"name": "east", "builder_type": "amazon-ebs", "artifact_id": "us-east-1:ami-0abc", "packer_run_uuid": "r1"}], "last_run_uuid": "r1"}"#,
    )
    .unwrap();
    let (code, out, err) = put(
        &source,
        &work,
        10,
        json!({"action": "output", "outputs": {"note": "it's built"}, "packer_manifest": "manifest.json"}),
    );
    assert_eq!(code, 0, "{err}");
    let version = serde_json::from_str::<Value>(&out).unwrap()["version"].clone();
    // Another job build does not hold the lease: refused as a put, nothing written.
    let (code, _, err) = put(
        &source,
        &work,
        11,
        json!({"action": "output", "outputs": {"note": "not mine"}}),
    );
    assert_eq!(code, buildstate::exit::BUSY, "{err}");
    assert!(err.contains("set `owner` in the put's params"), "{err}");
    // A manifest outside the put's folder is refused without reading it.
    let (code, _, err) = put(
        &source,
        &work,
        10,
        json!({"action": "output", "packer_manifest": "/etc/passwd"}),
    );
    assert_eq!(code, buildstate::exit::INVALID_INPUT, "{err}");
    let dest = dir.path().join("dest");
    let (code, _, err) = step(
        "in",
        &json!({"source": source, "version": version}),
        Some(&dest),
        Some(12),
    );
    assert_eq!(code, 0, "{err}");
    let outputs: Value =
        serde_json::from_slice(&std::fs::read(dest.join("outputs.json")).unwrap()).unwrap();
    assert_eq!(
        outputs,
        json!({
            "note": "it's built",
            "artifact_id": "us-east-1:ami-0abc",
            "builder_type": "amazon-ebs",
            "east_artifact_id": "us-east-1:ami-0abc",
            "east_builder_type": "amazon-ebs",
        })
    );
    let sourced = std::fs::read_to_string(dest.join("resume-metadata")).unwrap();
    assert!(
        sourced.contains("BUILDSTATE_OUTPUT_east_artifact_id="),
        "{sourced}"
    );
}

/// Issue 29: a put of `init` with `after` makes the build wait for an existing parent's
/// state, as init-state --after does; a missing parent or a build waiting for itself is
/// refused with the command's exit code and nothing is written.
#[test]
fn an_init_put_with_after_waits_for_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}/remote", dir.path().display());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let source = |id: &str| json!({"remote": remote, "build_id": id});
    let init = |id: &str, after: Value| {
        put(
            &source(id),
            &work,
            1,
            json!({"action": "init", "cloud": "aws", "image": "rhel9", "after": after}),
        )
    };
    let (code, _, err) = init("app-1", json!(["base-1:5"]));
    assert_eq!(code, buildstate::exit::INVALID_INPUT, "{err}");
    assert!(err.contains("there is no build 'base-1'"), "{err}");
    assert_eq!(init("base-1", json!([])).0, 0);
    let (code, _, err) = init("app-1", json!(["base-1:5"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = init("loop-1", json!(["loop-1:5"]));
    assert_eq!(code, buildstate::exit::INVALID_INPUT, "{err}");
    assert!(err.contains("would wait for itself"), "{err}");
    let snap: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("remote/builds/app-1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(snap["schema_version"], 8);
    assert_eq!(snap["events"][0]["after"], json!(["base-1:5"]));
    assert!(!dir.path().join("remote/builds/loop-1.json").exists());
}
