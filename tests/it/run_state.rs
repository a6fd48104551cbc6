//! run-state against real commands: flaky, persistent, slow, interrupted and killed.
//! Waits poll for a state with a generous bound. Recorded times are checked against what
//! really happened: a command of known duration must be recorded as taking at least that
//! long (lower bounds hold on any machine; upper bounds are generous).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::util::{events, Env};
use buildstate::exit;

const PLAN: &str = r#"
name = "runner-test"
[[state]]
id = 0
name = "flaky"
expected = "1s"
work = true
retry = { policy = "immediate", max_attempts = 5, delay = "0s" }

[[state]]
id = 5
name = "strict"
expected = "1s"
retry = { policy = "backoff", max_attempts = 3, initial_delay = "1h", max_delay = "2h" }

[[state]]
id = 10
name = "slow"
expected = "1s"
timeout = "1s"
retry = { policy = "backoff", max_attempts = 3, initial_delay = "1h", max_delay = "2h" }

[[state]]
id = 15
name = "soon"
expected = "1s"
retry = { policy = "immediate", max_attempts = 3, delay = "1s" }
"#;

fn setup() -> Env {
    let env = Env::new();
    let plan = env.write("plan.toml", PLAN);
    env.init_with_plan("b", &plan).ok();
    env
}

fn script(env: &Env, name: &str, body: &str) -> String {
    let p = env.write(name, &format!("#!/bin/sh\n{body}\n"));
    Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    p.to_str().unwrap().to_string()
}

fn run_state(env: &Env, args: &[&str]) -> crate::util::Run {
    env.run("run-state", args)
}

fn spawn_run_state(env: &Env, args: &[&str]) -> Child {
    let mut cmd = env.command("run-state");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

/// Poll check-state until `pred` holds on its JSON (at most 30 s, then fail).
fn wait_for(env: &Env, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    crate::util::poll_until(what, || {
        last = env.state("b");
        pred(&last)
    });
    last
}

/// Whether a process runs (a zombie waiting for its parent to collect it does not).
fn alive(pid: &str) -> bool {
    let stat = Path::new("/proc").join(pid.trim()).join("stat");
    match std::fs::read_to_string(stat) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Poll until `pid` is gone (at most 30 s, then fail).
fn wait_gone(pid: &str, what: &str) {
    crate::util::poll_until(&format!("{what} (pid {}) to end", pid.trim()), || {
        !alive(pid)
    });
}

fn kinds(j: &serde_json::Value) -> Vec<String> {
    j["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn flaky_command_is_retried_until_it_succeeds() {
    let env = setup();
    let count = env.path("count");
    let cmd = script(
        &env,
        "flaky.sh",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\necho \"out $n state=$BUILDSTATE_STATE attempt=$BUILDSTATE_ATTEMPT\"\n[ $n -gt 2 ] || {{ echo \"mirror timed out; token=s3cr3t\" >&2; exit 1; }}",
            c = count.display()
        ),
    );
    let r = run_state(&env, &["b", "0", "--", &cmd]).ok();
    // stdout passes through unchanged, in order.
    assert_eq!(
        r.stdout,
        "out 1 state=0 attempt=1\nout 2 state=0 attempt=2\nout 3 state=0 attempt=3\n"
    );
    assert!(
        r.stderr.contains("mirror timed out; token=s3cr3t"),
        "stderr passes through: {}",
        r.stderr
    );
    let j = env.state("b");
    assert_eq!(
        kinds(&j),
        ["init", "start", "fail", "start", "fail", "start", "complete"]
    );
    let fails: Vec<_> = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "fail")
        .collect();
    for f in fails {
        assert_eq!(f["category"], "transient");
        assert_eq!(f["exit_code"], 1);
        let m = f["message"].as_str().unwrap();
        assert!(
            m.starts_with("command exited with code 1: mirror timed out; token=[REDACTED]"),
            "{m}"
        );
        assert!(!m.contains("s3cr3t"));
    }
    assert_eq!(j["current_state"], 0);
}

#[test]
fn persistent_failure_blocks_until_a_person_retries() {
    let env = setup();
    env.run("update-state", &["b", "complete", "0"]).ok();
    let r = run_state(
        &env,
        &[
            "b",
            "5",
            "--",
            "sh",
            "-c",
            "echo 'Permission denied (publickey)' >&2; exit 255",
        ],
    )
    .code(exit::BLOCKED);
    assert!(
        r.stderr
            .contains("needs a person: the failure is persistent"),
        "{}",
        r.stderr
    );
    let j = env
        .run("check-state", &["b", "--json"])
        .code(exit::BLOCKED)
        .json();
    assert_eq!(
        (j["decision"].as_str(), j["category"].as_str()),
        (Some("blocked"), Some("persistent"))
    );
    assert!(
        j["reason"].as_str().unwrap().contains("attempt 1 of 3"),
        "{}",
        j["reason"]
    );
    // Running it again is refused until a person says so; nothing is written.
    let before = env.state("b")["serial"].clone();
    let r = run_state(&env, &["b", "5", "--", "true"]).code(exit::REFUSED);
    assert!(r.stderr.contains("is blocked"), "{}", r.stderr);
    assert_eq!(env.state("b")["serial"], before);
    env.run(
        "update-state",
        &["b", "retry", "5", "--reason", "added the key"],
    )
    .ok();
    run_state(&env, &["b", "5", "--", "true"]).ok();
    let j = env.state("b");
    assert_eq!(j["current_state"], 5);
    let retry = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "retry")
        .unwrap();
    assert_eq!(retry["message"], "added the key");
    assert!(!retry["actor"]["user"].as_str().unwrap().is_empty());
}

#[test]
fn timeout_kills_the_command_and_schedules_a_retry() {
    let env = setup();
    for s in ["0", "5"] {
        env.run("update-state", &["b", "complete", s]).ok();
    }
    let pidfile = env.path("pid");
    let r = run_state(
        &env,
        &[
            "b",
            "10",
            "--kill-grace",
            "1s",
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        ],
    )
    .code(exit::WAIT);
    assert!(r.stderr.contains("retry is scheduled at"), "{}", r.stderr);
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(!alive(&pid), "the timed-out command is still running");
    let j = env
        .run("check-state", &["b", "--json", "--history"])
        .code(exit::WAIT)
        .json();
    assert_eq!(j["decision"], "wait");
    assert_eq!(j["category"], "transient");
    assert!(j["not_before"].is_string());
    let fail = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "fail")
        .unwrap()
        .clone();
    assert!(
        fail["message"]
            .as_str()
            .unwrap()
            .starts_with("command timed out after 1s"),
        "{fail}"
    );
    // Not due: run-state does not run it, and says so with the wait code.
    let before = env.state("b")["serial"].clone();
    run_state(&env, &["b", "10", "--", "true"]).code(exit::WAIT);
    assert_eq!(env.state("b")["serial"], before);
}

#[test]
fn a_retry_due_within_max_wait_runs_in_process() {
    let env = setup();
    for s in ["0", "5", "10"] {
        env.run("update-state", &["b", "skip", s, "--reason", "test"])
            .ok();
    }
    let count = env.path("count");
    let cmd = script(
        &env,
        "once.sh",
        &format!("n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -ge 1 ] || {{ echo 'HTTP 503' >&2; exit 1; }}", c = count.display()),
    );
    // The 1 s delay is beyond the default --max-wait of 0: recorded, exit 12.
    run_state(&env, &["b", "15", "--", &cmd]).code(exit::WAIT);
    std::fs::remove_file(&count).unwrap();
    env.run(
        "update-state",
        &["b", "retry", "15", "--reason", "reset for the test"],
    )
    .ok();
    // Within --max-wait, the same process waits and retries.
    let r = run_state(&env, &["b", "15", "--max-wait", "30s", "--", &cmd]).ok();
    assert!(r.stderr.contains("retrying in"), "{}", r.stderr);
    assert_eq!(env.state("b")["status"], "completed");
}

#[test]
fn interrupt_is_forwarded_and_recorded() {
    let env = setup();
    let pidfile = env.path("pid");
    let cmd = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut child = spawn_run_state(&env, &["b", "0", "--", "sh", "-c", &cmd]);
    wait_for(&env, "the state to run", |j| j["status"] == "running");
    wait_for(&env, "the command to start", |_| {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.is_empty())
    });
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!alive(&pid), "SIGTERM was not forwarded to the command");
    let j = env
        .run("check-state", &["b", "--json", "--history"])
        .ok()
        .json();
    assert_eq!(kinds(&j), ["init", "start", "interrupt"]);
    assert_eq!(j["history"][2]["message"], "interrupted by SIGTERM");
    // An interruption does not use up an attempt: retry now, attempt 2 of 6 (5 + 1).
    assert_eq!(j["decision"], "retry");
    assert!(
        j["reason"].as_str().unwrap().contains("attempt 2 of 6"),
        "{}",
        j["reason"]
    );
}

#[test]
fn killed_worker_leaves_a_resumable_build_and_the_next_one_takes_over() {
    let env = setup();
    let pidfile = env.path("pid");
    let grandchild = env.path("grandchild");
    // The command starts a process of its own, as real build scripts do.
    let cmd = format!(
        "sleep 60 & echo $! > {g}; echo $$ > {p}; wait",
        g = grandchild.display(),
        p = pidfile.display()
    );
    let mut worker = spawn_run_state(
        &env,
        &[
            "b",
            "0",
            "--lease-ttl",
            "1s",
            "--kill-grace",
            "1s",
            "--",
            "sh",
            "-c",
            &cmd,
        ],
    );
    wait_for(&env, "the command to start", |_| {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.is_empty())
    });
    let j = env
        .run("check-state", &["b", "--json"])
        .code(exit::BUSY)
        .json();
    assert!(
        j["reason"].as_str().unwrap().contains("held by"),
        "{}",
        j["reason"]
    );
    // While the lease lives, a second worker and update-state are turned away.
    let r = run_state(&env, &["b", "0", "--", "true"]).code(exit::BUSY);
    assert!(r.stderr.contains("is held by"), "{}", r.stderr);
    env.run("update-state", &["b", "complete", "0"])
        .code(exit::BUSY);

    worker.kill().unwrap(); // SIGKILL: no chance to record anything
    worker.wait().unwrap();
    // The command and what it started die with their worker: nothing is left to race
    // the worker that takes over.
    let child = std::fs::read_to_string(&pidfile).unwrap();
    let grandchild = std::fs::read_to_string(&grandchild).unwrap();
    wait_gone(&child, "the killed worker's command");
    wait_gone(&grandchild, "a process the killed worker's command started");

    let j = wait_for(&env, "the lease to expire", |j| j["decision"] == "resume");
    assert_eq!(j["next_state"], 0);
    assert!(
        j["reason"].as_str().unwrap().contains("presumed dead"),
        "{}",
        j["reason"]
    );
    assert_eq!(env.run("check-state", &["b"]).code, exit::OK);

    run_state(&env, &["b", "0", "--", "true"]).ok();
    let j = env.state("b");
    assert_eq!(
        kinds(&j),
        ["init", "start", "takeover", "start", "complete"]
    );
    assert!(
        j["history"][2]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{}",
        j["history"][2]
    );
    assert_eq!(j["history"][3]["attempt"], 2);
}

#[test]
fn a_worker_paused_past_its_lease_cannot_record_its_result() {
    let env = setup();
    let started = env.path("started");
    let go = env.path("go");
    // Succeeds, but only once it is told to: after another worker has taken over.
    let cmd = format!(
        "touch {s}; while [ ! -e {g} ]; do sleep 0.05; done; echo done",
        s = started.display(),
        g = go.display()
    );
    let w1 = env
        .command("run-state")
        .args(["b", "0", "--lease-ttl", "1s", "--", "sh", "-c", &cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env, "w1's command to start", |_| started.exists());
    // w1 stalls (a paused VM, a long GC, a stopped process) past its lease...
    unsafe { libc::kill(w1.id() as i32, libc::SIGSTOP) };
    wait_for(&env, "w1's lease to expire", |j| j["decision"] == "resume");
    // ...w2 takes over and fails for good...
    run_state(
        &env,
        &[
            "b",
            "0",
            "--",
            "sh",
            "-c",
            "echo 'permission denied' >&2; exit 1",
        ],
    )
    .code(exit::BLOCKED);
    let before = env.state("b");
    // ...then w1 wakes up and its command succeeds. Its result must not be recorded.
    std::fs::write(&go, "").unwrap();
    unsafe { libc::kill(w1.id() as i32, libc::SIGCONT) };
    let out = w1.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::LEASE_LOST), "{stderr}");
    assert!(
        stderr.contains("no longer current") || stderr.contains("lost the lease"),
        "{stderr}"
    );
    let after = env.state("b");
    assert_eq!(after["serial"], before["serial"], "w1 wrote something");
    assert_eq!(after["status"], "blocked");
    assert_eq!(
        kinds(&after),
        ["init", "start", "takeover", "start", "fail"]
    );
}

#[test]
fn next_runs_the_decided_state_and_stops_when_done() {
    let env = setup();
    let log = env.path("log");
    let cmd = format!("echo $BUILDSTATE_STATE >> {}", log.display());
    for _ in 0..4 {
        run_state(&env, &["b", "--next", "--", "sh", "-c", &cmd]).ok();
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "0\n5\n10\n15\n");
    let r = run_state(&env, &["b", "--next", "--", "sh", "-c", &cmd]).code(exit::COMPLETED);
    assert!(r.stderr.contains("nothing run"), "{}", r.stderr);
}

#[test]
fn a_missing_command_blocks_with_a_clear_message() {
    let env = setup();
    run_state(&env, &["b", "0", "--", "/no/such/kickstart.sh"]).code(exit::BLOCKED);
    let j = env.state("b");
    assert_eq!(j["last_category"], "persistent");
    assert!(
        j["last_error"]
            .as_str()
            .unwrap()
            .starts_with("cannot run /no/such/kickstart.sh"),
        "{}",
        j["last_error"]
    );
    let r = env.run("run-state", &["b", "0"]).code(exit::USAGE);
    assert!(r.stderr.contains("COMMAND"), "{}", r.stderr);
}

#[test]
fn manual_commands_refuse_nonsense_and_write_nothing() {
    let env = setup();
    env.run("update-state", &["b", "complete", "0"]).ok();
    let before = env.state("b")["serial"].clone();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["b", "rollback", "--reason", "x"],
            exit::REFUSED,
            "cannot roll back past state 0 (flaky)",
        ),
        (
            &["b", "rollback", "--to", "5", "--reason", "x"],
            exit::REFUSED,
            "not before the last completed state",
        ),
        (
            &["b", "skip", "7", "--reason", "x"],
            exit::REFUSED,
            "state 7 is not in its plan",
        ),
        (
            &["b", "skip", "10", "--reason", "x"],
            exit::REFUSED,
            "only the next or the failed state can be skipped, which is state 5 (strict)",
        ),
        (
            &["b", "retry", "5", "--reason", "x"],
            exit::REFUSED,
            "has not failed",
        ),
        (
            &["b", "skip", "5", "--reason", " "],
            exit::INVALID_INPUT,
            "needs a reason",
        ),
        (&["b", "cancel"], exit::USAGE, "--reason"),
    ];
    for (args, code, want) in cases {
        let r = env.run("update-state", args).code(*code);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert_eq!(env.state("b")["serial"], before, "{args:?} wrote something");
    }
    env.run(
        "update-state",
        &["b", "cancel", "--reason", "superseded by b2"],
    )
    .ok();
    let j = env
        .run("check-state", &["b", "--json"])
        .code(exit::BLOCKED)
        .json();
    assert_eq!(j["status"], "cancelled");
    run_state(&env, &["b", "--next", "--", "true"]).code(exit::BLOCKED);
}

#[test]
fn a_private_key_on_stderr_is_redacted_before_the_tail_is_cut() {
    let env = setup();
    // A 39 KB private key: the default 16 KiB tail starts in its middle, without the
    // BEGIN line. Pseudo-random base64 lines of 64 characters, as PEM has them.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut pem = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for _ in 0..600 {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pem.push(alphabet[(x % 64) as usize] as char);
        }
        pem.push('\n');
    }
    pem.push_str("-----END RSA PRIVATE KEY-----\n");
    let key = env.write("key.pem", &pem);
    let cmd = format!(
        "cat '{}' >&2; echo 'deploy failed: bad key' >&2; exit 1",
        key.display()
    );
    run_state(&env, &["b", "0", "--", "sh", "-c", &cmd]);
    let h = env.state("b")["history"].clone();
    let text = h.to_string();
    let body_line = pem.lines().nth(300).unwrap();
    assert!(!text.contains(body_line), "a key line was stored");
    assert!(
        !pem.lines().skip(1).take(600).any(|l| text.contains(l)),
        "some key line was stored"
    );
    assert!(text.contains("deploy failed: bad key"), "{text}");
}

/// A plan whose times the tests below know: a 3-second retry delay without jitter, and a
/// prerequisite that takes 3 seconds.
const TIMED: &str = r#"
name = "timed"
[[state]]
id = 5
name = "sleeper"
expected = "2s"
retry = { policy = "immediate", max_attempts = 3, delay = "3s" }

[[state]]
id = 10
name = "gated"
expected = "1s"
requires = "sleep 3"
"#;

fn timed_setup() -> Env {
    let env = Env::new();
    let plan = env.write("plan.toml", TIMED);
    env.init_with_plan("b", &plan).code(exit::OK);
    env
}

fn millis(at: &serde_json::Value) -> u128 {
    let t = humantime::parse_rfc3339(at.as_str().expect("a time")).expect("an RFC 3339 time");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

#[test]
fn a_command_of_known_duration_is_recorded_as_taking_that_long() {
    let env = timed_setup();
    run_state(&env, &["b", "5", "--", "sleep", "2"]).code(exit::OK);
    let j = env.state("b");
    let (start, done) = (events(&j, "start")[0], events(&j, "complete")[0]);
    let took = millis(&done["at"]) - millis(&start["at"]);
    assert!(
        (2000..20_000).contains(&took),
        "complete {took} ms after start"
    );
    // The duration is what the event times say, not an estimate of its own.
    let duration = done["duration_ms"].as_u64().unwrap() as u128;
    assert!(
        duration.abs_diff(took) <= 1,
        "duration {duration} ms, times {took} ms"
    );

    // The statistics built from these events say the same.
    let stats = env
        .run("monitor", &["stats", "--json"])
        .code(exit::OK)
        .json();
    let p50 = stats["states"][0]["p50_seconds"].as_f64().unwrap();
    assert!((2.0..20.0).contains(&p50), "p50 {p50} s");
}

#[test]
fn a_retry_waits_its_delay_from_the_failure_not_from_the_start() {
    let env = timed_setup();
    let fails_late = [
        "b",
        "5",
        "--max-wait",
        "0s",
        "--",
        "sh",
        "-c",
        "sleep 2; exit 1",
    ];
    run_state(&env, &fails_late).code(exit::WAIT);
    let j = env.state("b");
    let (start, fail) = (events(&j, "start")[0], events(&j, "fail")[0]);
    let failed_at = millis(&fail["at"]);
    assert!(failed_at - millis(&start["at"]) >= 2000, "{start} {fail}");
    let due = millis(&j["not_before"]) - failed_at;
    assert!(
        (2990..=3010).contains(&due),
        "retry due {due} ms after the failure"
    );
    // Asked at once, the retry is not due yet: the wait is counted from the failure.
    run_state(&env, &fails_late).code(exit::WAIT);
    assert_eq!(events(&env.state("b"), "start").len(), 1);
}

#[test]
fn the_lease_starts_when_the_state_starts_not_before_its_prerequisite() {
    let env = timed_setup();
    let began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    env.run("update-state", &["b", "complete", "5"])
        .code(exit::OK);
    // The prerequisite takes 3 s, longer than the 2-second lease.
    let mut first = env.command("run-state");
    first
        .args(["b", "10", "--lease-ttl", "2s", "--", "sleep", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut first = first.spawn().unwrap();
    let j = wait_for(&env, "state 10 to start", |j| j["status"] == "running");
    let start = events(&j, "start")[0];
    assert!(
        millis(&start["at"]) - began >= 3000,
        "start stamped before its prerequisite ran: {start}"
    );
    let until = millis(&j["lease_expires_at"]);
    assert!(
        until > millis(&start["at"]) + 1000,
        "lease {until} for a start at {start}"
    );
    // A second worker (run-state's owner is its own process) finds the lease live and leaves the state alone.
    let mut second = env.command("run-state");
    second.args(["b", "10", "--", "true"]);
    env.run_with(&mut second, None).code(exit::BUSY);
    assert_eq!(first.wait().unwrap().code(), Some(exit::OK));
    let j = env.state("b");
    assert_eq!(j["current_state"], 10);
    assert_eq!(events(&j, "start").len(), 1, "{}", j["history"]);
}

/// Run `cmd` to its end as a pipeline does (reading its output to end-of-file); how long
/// that took.
fn timed(env: &Env, cmd: &mut Command) -> (crate::util::Run, std::time::Duration) {
    let begun = std::time::Instant::now();
    let r = env.run_with(cmd, None);
    (r, begun.elapsed())
}

#[test]
fn a_timeout_holds_whatever_the_command_started_outside_its_group() {
    let env = timed_setup();
    // `setsid` leaves run-state's process group and keeps its stdout open: the group kill
    // missed it and the caller read the output until it ended by itself.
    let leak = env.path("leaked.pid");
    let cmd = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 25' & sleep 1000",
        leak.display()
    );
    let mut c = env.command("run-state");
    c.args([
        "b",
        "5",
        "--timeout",
        "2s",
        "--kill-grace",
        "1s",
        "--max-wait",
        "0s",
    ])
    .args(["--", "sh", "-c", &cmd]);
    let (r, took) = timed(&env, &mut c);
    assert_eq!(r.code, exit::WAIT, "{}", r.stderr);
    assert!(took.as_secs() < 10, "run-state returned after {took:?}");
    let pid = std::fs::read_to_string(&leak).unwrap();
    wait_gone(&pid, "the setsid child");
    let fail = events(&env.state("b"), "fail")[0].clone();
    assert!(
        fail["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 2s"),
        "{fail}"
    );
}

#[test]
fn a_verify_timeout_holds_whatever_the_check_started_outside_its_group() {
    let env = Env::new();
    let plan = env.write(
        "plan.toml",
        "name = \"v\"\n[[state]]\nid = 5\nname = \"k\"\nexpected = \"1s\"\nverify = \"setsid sleep 30 & sleep 1000\"\n",
    );
    env.init_with_plan("b", &plan).code(exit::OK);
    env.run("update-state", &["b", "complete", "5"])
        .code(exit::OK);
    let mut c = env.command("check-state");
    c.args(["b", "--verify", "--verify-timeout", "2s", "--json"]);
    let (r, took) = timed(&env, &mut c);
    assert!(
        took.as_secs() < 12,
        "check-state --verify returned after {took:?}: {}",
        r.stderr
    );
    // A check that timed out says nothing of the result: recorded, not drift.
    let j = env.state("b");
    let last = j["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "unverified", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 2s"),
        "{last}"
    );
    assert_eq!(j["decision"], "completed", "{}", r.stdout);
}

#[test]
fn a_failed_prerequisite_is_printed_redacted() {
    let env = Env::new();
    let plan = env.write(
        "plan.toml",
        "name = \"p\"\n[[state]]\nid = 5\nname = \"db\"\nexpected = \"1s\"\nrequires = \"PGPASSWORD=hunter2xyz psql -h db -c 'select 1' 2>/dev/null || false\"\n",
    );
    env.init_with_plan("b", &plan).code(exit::OK);
    let r = run_state(&env, &["b", "5", "--", "true"]).code(exit::BLOCKED);
    assert!(
        r.stderr.contains("prerequisite `PGPASSWORD=[REDACTED]"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("hunter2xyz"), "{}", r.stderr);
    assert!(!env.state("b").to_string().contains("hunter2xyz"));
}

/// `requires` is part of starting a state, whichever front end starts it: update-state
/// start (and the Concourse put, the Python Store: tests/it/concourse.rs, test_api.py) is
/// blocked on a prerequisite that fails, exit 13, with no attempt used, as run-state is.
#[test]
fn update_state_start_checks_requires_as_run_state_does() {
    let env = Env::new();
    let flag = env.path("ready");
    let plan = env.write(
        "plan.toml",
        &format!(
            "name = \"p\"\n[[state]]\nid = 5\nname = \"db\"\nexpected = \"1s\"\nrequires = \"test -e {} || {{ echo 'no database yet' >&2; exit 3; }}\"\n",
            flag.display()
        ),
    );
    env.init_with_plan("b", &plan).code(exit::OK);
    let r = env
        .run("update-state", &["b", "start", "5"])
        .code(exit::BLOCKED);
    assert!(r.stderr.contains("no database yet"), "{}", r.stderr);
    let j = env.state("b");
    assert_eq!(j["status"], "blocked", "{j}");
    assert_eq!(j["last_category"], "prerequisite", "{j}");
    assert!(events(&j, "start").is_empty(), "{j}");
    // Fixed and allowed again by a person: the start goes ahead.
    std::fs::write(&flag, "").unwrap();
    env.run(
        "update-state",
        &["b", "retry", "5", "--reason", "database is up"],
    )
    .code(exit::OK);
    env.run("update-state", &["b", "start", "5"]).code(exit::OK);
    assert_eq!(env.state("b")["status"], "running");
}
