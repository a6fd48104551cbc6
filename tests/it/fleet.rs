//! Remote mode under fleet conditions (issue 13), on a file:// remote with the real
//! binaries: a hung writer holding the folder's lock, racing backups, a deleted remote
//! object, shared folders and the umask, snapshots written with finer times, forged
//! snapshots, signed snapshots and clocks that disagree.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::util::{strs, Env, Run};
use buildstate::exit;

struct Remote {
    _dir: tempfile::TempDir,
    url: String,
    path: PathBuf,
}

fn remote() -> Remote {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remote");
    let url = format!("file://{}", path.display());
    Remote {
        _dir: dir,
        url,
        path,
    }
}

impl Remote {
    fn object(&self, id: &str) -> PathBuf {
        self.path.join("builds").join(format!("{id}.json"))
    }

    fn snapshot(&self, id: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.object(id)).unwrap()).unwrap()
    }

    fn write_snapshot(&self, id: &str, v: &serde_json::Value) {
        std::fs::write(self.object(id), serde_json::to_vec(v).unwrap()).unwrap();
    }
}

/// `tool args` in remote mode on `env`'s database.
fn on(env: &Env, r: &Remote, tool: &str, args: &[&str]) -> Run {
    let mut c = env.command(tool);
    c.env("BUILDSTATE_REMOTE", &r.url).args(args);
    env.run_with(&mut c, None)
}

fn init(env: &Env, r: &Remote, id: &str) {
    on(
        env,
        r,
        "init-state",
        &[id, "--cloud", "aws", "--image", "rhel9"],
    )
    .ok();
}

#[test]
fn a_writer_holding_the_folder_lock_does_not_block_others_past_the_timeout() {
    let r = remote();
    let a = Env::new();
    init(&a, &r, "img-1");
    // A stopped writer: something holds the folder's lock and never lets go.
    let mut holder = Command::new("flock")
        .arg(r.path.join(".buildstate.lock"))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    crate::util::poll_until("the lock to be held", || {
        Command::new("flock")
            .args(["-n"])
            .arg(r.path.join(".buildstate.lock"))
            .arg("true")
            .status()
            .unwrap()
            .code()
            == Some(1)
    });
    let mut c = a.command("update-state");
    c.env("BUILDSTATE_REMOTE", &r.url)
        .env("BUILDSTATE_REMOTE_TIMEOUT", "1s")
        .args(["img-1", "meta", "k=v"]);
    let out = a.run_with(&mut c, None);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = out.code(exit::REMOTE);
    assert!(
        out.stderr.contains("could not lock the folder")
            && out.stderr.contains("nothing was written"),
        "{}",
        out.stderr
    );
    assert_eq!(
        a.state("img-1")["serial"],
        1,
        "the local write was rolled back"
    );
    assert!(a.state("img-1")["metadata"].get("k").is_none());
}

#[test]
fn backups_with_the_same_name_from_many_machines_at_once_keep_exactly_one() {
    let r = remote();
    for round in 0..3 {
        let workers: Vec<Env> = (0..6).map(|_| Env::new()).collect();
        for w in &workers {
            w.init("img-1");
        }
        let name = format!("nightly-{round}.db");
        let children: Vec<_> = workers
            .iter()
            .map(|w| {
                w.command("sync-cloud")
                    .args(["--remote", &r.url, "backup", "--name", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let codes: Vec<i32> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
            .collect();
        assert_eq!(
            codes.iter().filter(|c| **c == 0).count(),
            1,
            "round {round}: {codes:?}"
        );
        assert!(
            codes.iter().all(|c| *c == 0 || *c == exit::REMOTE_CHANGED),
            "{codes:?}"
        );
    }
}

#[test]
fn a_deleted_remote_object_is_named_and_push_force_recreates_it() {
    let r = remote();
    let a = Env::new();
    init(&a, &r, "img-1");
    on(&a, &r, "update-state", &["img-1", "complete", "5"]).ok();
    std::fs::remove_file(r.object("img-1")).unwrap();
    let e = on(&a, &r, "update-state", &["img-1", "start", "10"]).code(exit::REMOTE_CHANGED);
    assert!(
        e.stderr.contains("is gone") && e.stderr.contains("sync-cloud push img-1 --force"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("lost the race"), "{}", e.stderr);
    assert_eq!(a.state("img-1")["serial"], 2, "nothing was written");
    a.run(
        "sync-cloud",
        &["--remote", &r.url, "push", "img-1", "--force"],
    )
    .ok();
    on(&a, &r, "update-state", &["img-1", "start", "10"]).ok();
    assert_eq!(r.snapshot("img-1")["serial"], 3);
}

#[test]
fn remote_objects_and_backups_honour_the_umask() {
    let r = remote();
    let a = Env::new();
    // `sh -c 'umask 022; exec "$@"' sh BIN ARGS...`: the binary runs under umask 022.
    let under_umask = |tool: &str, args: &[&str]| {
        let mut c = Command::new("sh");
        c.args(["-c", "umask 022; exec \"$@\"", "sh"])
            .arg(crate::util::bin(tool))
            .arg("--db")
            .arg(&a.db)
            .args(["--remote", &r.url])
            .args(args);
        a.run_with(&mut c, None).ok();
    };
    under_umask(
        "init-state",
        &["img-1", "--cloud", "aws", "--image", "rhel9"],
    );
    under_umask("sync-cloud", &["backup", "--name", "n.db"]);
    for p in [r.object("img-1"), r.path.join("backups/n.db")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{}", p.display());
    }
}

#[test]
fn a_snapshot_with_sub_millisecond_times_pulls_and_then_stays_up_to_date() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    init(&a, &r, "img-1");
    on(&a, &r, "update-state", &["img-1", "complete", "5"]).ok();
    // Another writer's snapshot, with microseconds.
    let mut v = r.snapshot("img-1");
    for e in v["events"].as_array_mut().unwrap() {
        let at = e["at"].as_str().unwrap().replace('Z', "456Z");
        e["at"] = at.into();
    }
    r.write_snapshot("img-1", &v);
    let sync = |env: &Env, args: &[&str]| {
        let mut full = vec!["--remote", &r.url];
        full.extend(args);
        env.run("sync-cloud", &full)
    };
    assert_eq!(
        sync(&b, &["pull", "img-1", "--json"]).ok().json()["outcome"],
        "created"
    );
    assert_eq!(
        sync(&b, &["pull", "img-1", "--json"]).ok().json()["outcome"],
        "up_to_date"
    );
    // And a remote-mode write on top of it goes through.
    on(&b, &r, "update-state", &["img-1", "start", "10"]).ok();
}

#[test]
fn a_forged_summary_is_refused_by_every_reader_and_its_etag_never_kept() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    init(&a, &r, "img-1");
    on(&a, &r, "update-state", &["img-1", "complete", "5"]).ok();
    on(
        &a,
        &r,
        "update-state",
        &["img-1", "start", "10", "--owner", "W1"],
    )
    .ok();
    // The history names the lease holder that wrote each event.
    let h = a.state("img-1")["history"].clone();
    let last = h.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["owner"].as_str()),
        (Some("start"), Some("W1"))
    );
    let before = std::fs::read(r.object("img-1")).unwrap();

    // Someone with write access to the bucket marks the build completed.
    let mut v = r.snapshot("img-1");
    v["build"]["status"] = "completed".into();
    v["build"]["current_state"] = 100.into();
    v["build"]["active_state"] = serde_json::Value::Null;
    v["build"]["attempt"] = 0.into();
    v["build"]["lease_owner"] = serde_json::Value::Null;
    v["build"]["lease_expires_at"] = serde_json::Value::Null;
    r.write_snapshot("img-1", &v);

    let pull = |env: &Env| env.run("sync-cloud", &["--remote", &r.url, "pull", "img-1"]);
    // A fresh worker: refused, and it does not answer "completed".
    let e = pull(&b).code(exit::INVALID_SNAPSHOT);
    assert!(
        e.stderr.contains("disagrees with the events") && e.stderr.contains("status completed"),
        "{}",
        e.stderr
    );
    let c = on(&b, &r, "check-state", &["img-1"]);
    assert_ne!(c.code, exit::COMPLETED, "{}", c.stdout);
    // The worker that wrote it: refused too, in remote mode as well, nothing written.
    pull(&a).code(exit::INVALID_SNAPSHOT);
    on(&a, &r, "update-state", &["img-1", "meta", "k=v"]).code(exit::INVALID_SNAPSHOT);
    assert_eq!(a.state("img-1")["status"], "running");
    // Its ETag was not remembered: once the honest copy is back, writes go on.
    std::fs::write(r.object("img-1"), before).unwrap();
    on(
        &a,
        &r,
        "update-state",
        &["img-1", "complete", "10", "--owner", "W1"],
    )
    .ok();
}

#[test]
fn with_a_snapshot_key_only_holders_of_the_key_can_write_what_others_believe() {
    let r = remote();
    let key = "s3cr3t-snapshot-key-0123456789";
    let (a, b, intruder) = (Env::new(), Env::new(), Env::new());
    let keyed = |env: &Env, tool: &str, args: &[&str]| {
        let mut c = env.command(tool);
        c.env("BUILDSTATE_REMOTE", &r.url)
            .env("BUILDSTATE_SNAPSHOT_KEY", key)
            .args(args);
        env.run_with(&mut c, None)
    };
    keyed(
        &a,
        "init-state",
        &["img-1", "--cloud", "aws", "--image", "rhel9"],
    )
    .ok();
    let out = keyed(&a, "update-state", &["img-1", "complete", "5", "--json"]).ok();
    let v = r.snapshot("img-1");
    assert_eq!(v["signature"]["alg"], "hmac-sha256");
    let raw = String::from_utf8(std::fs::read(r.object("img-1")).unwrap()).unwrap();
    assert!(!raw.contains(key) && !out.stdout.contains(key) && !out.stderr.contains(key));
    assert!(!crate::util::file_contains(&a.db, key.as_bytes()));
    // A machine with the key reads it.
    keyed(&b, "check-state", &["img-1"]).ok();

    // Someone who can write the bucket but lacks the key: an edit that keeps events and
    // summary consistent (a metadata value), and a copy written by a buildstate without
    // the key. Both are refused by holders of the key, and nothing is written.
    let mut v = r.snapshot("img-1");
    v["events"][1]["message"] = "kickstart skipped by ops".into();
    r.write_snapshot("img-1", &v);
    let e = keyed(&b, "check-state", &["img-1"]).code(exit::INVALID_SNAPSHOT);
    assert!(
        e.stderr.contains("signature does not match"),
        "{}",
        e.stderr
    );
    keyed(&a, "update-state", &["img-1", "start", "10"]).code(exit::INVALID_SNAPSHOT);
    std::fs::remove_file(r.object("img-1")).unwrap();
    on(
        &intruder,
        &r,
        "init-state",
        &["img-1", "--cloud", "aws", "--image", "rhel9"],
    )
    .ok();
    let e = keyed(&b, "check-state", &["img-1"]).code(exit::INVALID_SNAPSHOT);
    assert!(e.stderr.contains("not signed"), "{}", e.stderr);
    assert!(!e.stderr.contains(key));
}

/// `tool args` on `env`'s database under libfaketime's clock `offset` (`+10m`, `-2h`).
/// Monotonic clocks stay real, and file times are the file system's (NO_FAKE_STAT), as
/// on a machine whose clock is wrong writing to a shared mount whose server stamps them.
fn skewed(env: &Env, offset: &str, remote: Option<&Remote>, tool: &str, args: &[&str]) -> Run {
    let mut c = Command::new("faketime");
    c.args(["-f", offset])
        .arg(crate::util::bin(tool))
        .arg("--db")
        .arg(&env.db)
        .args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BUILDSTATE_") {
            c.env_remove(key);
        }
    }
    c.env("HOME", env.dir.path())
        .env("NO_FAKE_STAT", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    if let Some(r) = remote {
        c.env("BUILDSTATE_REMOTE", &r.url);
    }
    let out = env.run_with(&mut c, None);
    assert!(
        !out.stderr.contains("faketime: command not found") && out.code != 127,
        "faketime (Debian's package) is needed: scripts/test installs it\n{}",
        out.stderr
    );
    out
}

#[test]
fn in_remote_mode_a_worker_whose_clock_is_off_neither_writes_nor_decides() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    init(&a, &r, "img-1");
    on(
        &a,
        &r,
        "update-state",
        &["img-1", "start", "5", "--owner", "A", "--lease-ttl", "5m"],
    )
    .ok();
    let before = std::fs::read(r.object("img-1")).unwrap();

    // Ten minutes ahead, A's live lease looks expired: B must not take it over.
    let e = skewed(
        &b,
        "+10m",
        Some(&r),
        "update-state",
        &["img-1", "start", "5", "--owner", "B"],
    );
    let e = e.code(exit::CLOCK_SKEW);
    // About ten minutes: the probe's round trip may take a second off on a busy machine.
    assert!(
        (e.stderr.contains("10m ahead of") || e.stderr.contains("9m 59s ahead of"))
            && e.stderr.contains("nothing was written"),
        "{}",
        e.stderr
    );
    // Two hours behind: a failure would schedule a retry that is already due, and a
    // decision would see A's lease as hours long. Neither is made.
    let e = skewed(
        &b,
        "-2h",
        Some(&r),
        "update-state",
        &["img-1", "fail", "5", "--owner", "A", "--error", "timed out"],
    );
    assert!(e.code(exit::CLOCK_SKEW).stderr.contains("behind"));
    skewed(&b, "-2h", Some(&r), "check-state", &["img-1"]).code(exit::CLOCK_SKEW);
    skewed(
        &b,
        "+3h",
        Some(&r),
        "run-state",
        &["img-1", "5", "--", "true"],
    )
    .code(exit::CLOCK_SKEW);
    assert_eq!(
        std::fs::read(r.object("img-1")).unwrap(),
        before,
        "the remote copy changed"
    );
    // Nothing a skewed clock did can make the state look stuck: A's start stands as A
    // recorded it, and the cron host's check finds nothing to report.
    let cron = Env::new();
    on(&cron, &r, "sync-cloud", &["pull", "img-1"]).ok();
    cron.run("monitor", &["check"]).ok();
    // A clock within the bound writes as usual, and the check can be turned off.
    on(&b, &r, "check-state", &["img-1"]).code(exit::BUSY);
    let mut c = b.command("check-state");
    c.env("BUILDSTATE_REMOTE", &r.url)
        .env("BUILDSTATE_MAX_CLOCK_SKEW", "soon")
        .arg("img-1");
    b.run_with(&mut c, None).code(exit::INVALID_INPUT);
}

#[test]
fn a_build_s_time_never_runs_backwards_and_a_backoff_is_never_skipped() {
    // One database, no remote: a person's update-state from a machine two hours behind.
    let a = Env::new();
    a.init("img-1");
    a.run("update-state", &["img-1", "start", "5", "--owner", "A"])
        .ok();
    skewed(
        &a,
        "-2h",
        None,
        "update-state",
        &[
            "img-1",
            "fail",
            "5",
            "--owner",
            "A",
            "--error",
            "connection timed out",
        ],
    )
    .ok();
    let j = a.state("img-1");
    let at = strs(&j["history"], "at");
    let mut sorted = at.clone();
    sorted.sort();
    assert_eq!(at, sorted, "event times went backwards");
    let fail = j["history"].as_array().unwrap().last().unwrap();
    assert_eq!(fail["kind"], "fail");
    assert!(fail["duration_ms"].as_u64().is_some());
    // The retry is still ahead (kickstart backs off 5 minutes), not already due.
    a.run("check-state", &["img-1"]).code(exit::WAIT);
}

const SHORT_PLAN: &str = r#"
name = "short-timeout"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 5
name = "long-job"
expected = "1s"
timeout = "3s"
[[state]]
id = 10
name = "next"
expected = "1s"
"#;

/// Build `b1` on [`SHORT_PLAN`], created in remote mode on `a`.
fn short_plan_build(a: &Env, r: &Remote) {
    let plan = a.write("plan.toml", SHORT_PLAN);
    let plan = plan.to_str().unwrap();
    on(
        a,
        r,
        "init-state",
        &["b1", "--cloud", "aws", "--image", "x", "--plan", plan],
    )
    .ok();
}

/// `run-state b1 5 --lease-ttl 1s --timeout TIMEOUT -- sh -c SCRIPT` on `a`, in remote
/// mode, in the background.
fn spawn_worker(a: &Env, r: &Remote, timeout: &str, script: &str) -> std::process::Child {
    a.command("run-state")
        .env("BUILDSTATE_REMOTE", &r.url)
        .args([
            "b1",
            "5",
            "--lease-ttl",
            "1s",
            "--timeout",
            timeout,
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_live_worker_s_lease_stays_visible_to_every_machine_while_its_command_runs() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    short_plan_build(&a, &r);
    // A runs state 5 under --timeout 30s, longer than the plan's 3 s timeout and than
    // its 1 s lease: the command waits for the test to release it.
    let release = a.path("release");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done",
        release.display()
    );
    let worker = spawn_worker(&a, &r, "30s", &script);
    crate::util::poll_until("state 5 to start on the remote", || {
        r.object("b1").exists() && r.snapshot("b1")["build"]["status"] == "running"
    });
    let first = r.snapshot("b1")["build"]["lease_expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    let past = |t: &str| buildstate::time::parse(t).unwrap() < std::time::SystemTime::now();
    // Past the lease the start took and the plan's timeout, the remote still shows A's
    // lease, renewed: B, on another machine, must not take over.
    crate::util::poll_until("the first lease to run out", || past(&first));
    crate::util::poll_until("a renewal to reach the remote", || {
        let now = r.snapshot("b1")["build"]["lease_expires_at"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        now > first
    });
    for _ in 0..3 {
        let out = on(&b, &r, "run-state", &["b1", "5", "--", "true"]);
        assert_eq!(
            out.code,
            exit::BUSY,
            "B took over a live worker's state:\n{}",
            out.stderr
        );
    }
    std::fs::write(&release, b"").unwrap();
    let done = worker.wait_with_output().unwrap();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let h = on(&b, &r, "check-state", &["b1", "--json", "--history"]).json()["history"].clone();
    let kinds = strs(&h, "kind");
    assert_eq!(kinds, ["init", "start", "complete"], "{h}");
}

#[test]
fn a_worker_learns_at_its_next_heartbeat_that_its_build_was_cancelled_elsewhere() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    short_plan_build(&a, &r);
    let marker = a.path("still-running");
    // The command would run for ever: only the lost lease stops it.
    let script = format!(
        "while true; do touch '{}'; sleep 0.05; done",
        marker.display()
    );
    let worker = spawn_worker(&a, &r, "1h", &script);
    crate::util::poll_until("the command to run", || marker.exists());
    on(
        &b,
        &r,
        "update-state",
        &["b1", "cancel", "--reason", "wrong image"],
    )
    .ok();
    let done = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(exit::LEASE_LOST), "{stderr}");
    assert!(stderr.contains("lost the lease"), "{stderr}");
    let j = on(&b, &r, "check-state", &["b1", "--json"]).json();
    assert_eq!(j["status"], "cancelled");
}

#[test]
fn a_write_the_remote_accepted_is_reported_as_written_when_the_local_commit_fails() {
    let r = remote();
    let (a, b) = (Env::new(), Env::new());
    init(&a, &r, "img-1");
    // The local commit fails after the push landed (a full disk, injected).
    crate::util::need_fail_points();
    let mut c = a.command("update-state");
    c.env("BUILDSTATE_REMOTE", &r.url)
        .env("BUILDSTATE_TEST_FAIL_COMMIT", "1")
        .args(["img-1", "start", "5", "--owner", "A"]);
    let out = a.run_with(&mut c, None).ok();
    assert!(out.stderr.contains("recorded on remote"), "{}", out.stderr);
    assert_eq!(r.snapshot("img-1")["build"]["lease_owner"], "A");
    // Every machine sees the lease, and its holder carries on: its next command pulls
    // the write it made.
    on(&b, &r, "check-state", &["img-1"]).code(exit::BUSY);
    on(
        &a,
        &r,
        "update-state",
        &["img-1", "complete", "5", "--owner", "A"],
    )
    .ok();
    let h = a.state("img-1")["history"].clone();
    let kinds = strs(&h, "kind");
    assert_eq!(kinds, ["init", "start", "complete"]);
}
