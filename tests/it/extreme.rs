//! No panics (issue 14): every binary and flag driven with extreme and malformed values,
//! from a table and from proptest. Whatever the input, a command answers with a
//! documented exit code and a message: never a Rust panic (exit 101) or an abort (134),
//! and never "panicked" on stderr.

use std::process::Stdio;

use crate::util::Env;

const HUGE: &str = "999999999999999999999999999999";

/// Run `tool args` (with `env` extra variables) on a database holding build `B`, and
/// check that it did not panic. Returns the exit code.
fn no_panic(e: &Env, tool: &str, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> i32 {
    let mut c = e.command(tool);
    if tool == "concourse-resource" {
        // Called by its step name, as Concourse does: no --db.
        c = std::process::Command::new(crate::util::bin(tool));
        c.env("HOME", e.dir.path());
    }
    c.args(args).envs(env.iter().copied());
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(stdin);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code != 101 && code != 134 && code != -1 && !stderr.contains("panicked"),
        "{tool} {args:?} {env:?}: exit {code}\n{stderr}"
    );
    // Every refusal explains itself.
    if code != 0 && !(10..=14).contains(&code) {
        assert!(
            !stderr.trim().is_empty(),
            "{tool} {args:?}: exit {code} without a message"
        );
    }
    code
}

fn setup() -> Env {
    let e = Env::new();
    e.init("B");
    e
}

#[test]
fn a_table_of_extreme_values_never_panics() {
    let e = setup();
    let huge_id = "x".repeat(100_000);
    let long = "y".repeat(120_000);
    let dir = e.dir.path().to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "update-state",
            vec!["B", "start", "5", "--lease-ttl", "999999999y"],
        ),
        (
            "update-state",
            vec!["B", "start", "5", "--lease-ttl", "9999999999999999999s"],
        ),
        ("update-state", vec!["B", "start", "5", "--lease-ttl", "0s"]),
        (
            "update-state",
            vec!["B", "start", "5", "--lease-ttl", "-1s"],
        ),
        ("update-state", vec!["B", "start", HUGE]),
        ("update-state", vec!["B", "start", "256"]),
        ("update-state", vec!["B", "start", "-1"]),
        ("update-state", vec!["B", "start", "5", "--owner", &long]),
        ("update-state", vec!["B", "fail", "5", "--error", &long]),
        ("update-state", vec!["B", "fail", "5", "--error-file", &dir]),
        (
            "update-state",
            vec!["B", "fail", "5", "--error-file", "/nonexistent"],
        ),
        (
            "update-state",
            vec!["B", "fail", "5", "--category", "weird"],
        ),
        ("update-state", vec!["B", "meta", "=v"]),
        ("update-state", vec![&huge_id, "meta", "k=v"]),
        ("update-state", vec!["B", "retry", "5", "--reason", ""]),
        ("update-state", vec!["B", "rollback", "--to", "999"]),
        ("check-state", vec![&huge_id]),
        ("check-state", vec!["B", "--output", "/dev/null"]),
        ("check-state", vec!["B", "--plan-file", &dir]),
        ("check-state", vec!["B", "--plan-file", "/dev/null"]),
        ("check-state", vec!["B", "--inputs-root", "/nonexistent"]),
        ("check-state", vec!["B", "--verify-timeout", "0s"]),
        ("update-state", vec!["B", "force", "999", "--reason", "x"]),
        ("update-state", vec!["B", "force", "--reason", "x"]),
        (
            "update-state",
            vec!["B", "force", "5", "--all", "--reason", "x"],
        ),
        ("update-state", vec!["B", "reset", "--reason", ""]),
        (
            "init-state",
            vec![&huge_id, "--cloud", "aws", "--image", "x"],
        ),
        ("init-state", vec!["C", "--cloud", &long, "--image", "x"]),
        (
            "init-state",
            vec!["C", "--cloud", "aws", "--image", "x", "--meta", "k"],
        ),
        (
            "run-state",
            vec!["B", "5", "--lease-ttl", "999999999y", "--", "true"],
        ),
        (
            "run-state",
            vec!["B", "5", "--timeout", "9999999999999999999s", "--", "true"],
        ),
        ("run-state", vec!["B", "5", "--timeout", "0s", "--", "true"]),
        (
            "run-state",
            vec!["B", "5", "--max-wait", "999999999y", "--", "true"],
        ),
        (
            "run-state",
            vec!["B", "5", "--kill-grace", HUGE, "--", "true"],
        ),
        (
            "run-state",
            vec!["B", "20", "--stderr-tail", "99999999999999", "--", "true"],
        ),
        (
            "run-state",
            vec!["B", "5", "--stderr-tail", "-1", "--", "true"],
        ),
        ("run-state", vec!["B", "5", "--", "/nonexistent/program"]),
        ("monitor", vec!["check", "--factor", "1e308"]),
        ("monitor", vec!["check", "--factor", "NaN"]),
        ("monitor", vec!["check", "--factor=-1"]),
        ("monitor", vec!["check", "--factor", "inf"]),
        ("monitor", vec!["deliver", "--retention", "999999999y"]),
        ("monitor", vec!["deliver", "--budget", HUGE]),
        (
            "monitor",
            vec!["wait", "B", "--until", "999", "--timeout", "999999999y"],
        ),
        (
            "monitor",
            vec![
                "wait",
                "B",
                "--until",
                "5",
                "--timeout",
                "1s",
                "--interval",
                "0s",
            ],
        ),
        ("monitor", vec!["metrics", "--textfile", &dir]),
        ("monitor", vec!["report", "--html", &dir]),
        (
            "monitor",
            vec!["report", "--html", "/nonexistent/dir/r.html"],
        ),
        (
            "monitor",
            vec!["report", "--html", "r.html", "--builds", "0"],
        ),
        ("check-state", vec!["B", "--html", &dir]),
        (
            "monitor",
            vec![
                "archive",
                "--completed-before",
                "999999999y",
                "--remote",
                "file:///dev/null",
            ],
        ),
        (
            "monitor",
            vec!["unarchive", "../x", "--remote", "file:///tmp"],
        ),
        ("monitor", vec!["stats", "--since", "999999999y"]),
        ("monitor", vec!["stats", "--since", "0s"]),
        ("monitor", vec!["stats", "--builds", "-1"]),
        ("monitor", vec!["stats", "--plan", "it's\n\u{7f}"]),
        ("sync-cloud", vec!["--remote", "s3://", "push", "B"]),
        ("sync-cloud", vec!["--remote", &long, "push", "B"]),
        (
            "sync-cloud",
            vec!["--remote", "file:///dev/null", "push", "B"],
        ),
        (
            "sync-cloud",
            vec!["--remote", "file:///tmp/x", "backup", "--name", "../../etc"],
        ),
        (
            "sync-cloud",
            vec!["--remote", "file:///tmp/x", "restore", "nope", "--to", &dir],
        ),
    ];
    for (tool, args) in &cases {
        no_panic(&e, tool, args, &[], b"");
    }
    // Numbers and durations from the environment.
    let envs: [(&str, &str); 8] = [
        ("BUILDSTATE_BUSY_TIMEOUT", "99999999999999"),
        ("BUILDSTATE_BUSY_TIMEOUT", "-5"),
        ("BUILDSTATE_LEASE_TTL", "999999999y"),
        ("BUILDSTATE_REMOTE_TIMEOUT", "999999999y"),
        ("BUILDSTATE_MAX_CLOCK_SKEW", "999999999y"),
        ("BUILDSTATE_SLACK_BUDGET", "999999999y"),
        ("BUILDSTATE_SLACK_RETRY_DELAY", "999999999y"),
        ("BUILDSTATE_SNAPSHOT_KEY", "short"),
    ];
    for (k, v) in envs {
        for (tool, args) in [
            ("check-state", vec!["B"]),
            ("update-state", vec!["B", "meta", "k=v"]),
            ("run-state", vec!["B", "5", "--", "true"]),
            (
                "sync-cloud",
                vec!["--remote", "file:///tmp/bs-extreme", "status"],
            ),
        ] {
            no_panic(&e, tool, &args, &[(k, v)], b"");
        }
    }
    // The Concourse resource: hostile requests on stdin.
    for req in [
        b"" as &[u8],
        b"{",
        b"null",
        b"{\"source\":{}}",
        b"{\"source\":{\"remote\":\"file:///tmp/bs-extreme\",\"build_id\":\"B\"},\"version\":{\"serial\":\"99999999999999999999999\"}}",
        b"{\"source\":{\"remote\":\"file:///tmp/bs-extreme\",\"build_id\":\"B\",\"credentials\":{\"AWS_SECRET_ACCESS_KEY\":\"a\\u0000b\"}}}",
        b"{\"source\":{\"remote\":\"file:///tmp/bs-extreme\",\"build_id\":\"B\"},\"params\":{\"action\":\"fail\",\"state\":99999}}",
    ] {
        for step in ["check", "in", "out"] {
            no_panic(&e, "concourse-resource", &[step, &dir], &[], req);
        }
    }
}

#[test]
fn output_failures_after_a_committed_write_are_reported_not_panicked() {
    let e = setup();
    // A full stdout: exit 21, saying the write is recorded; and it is.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = e
        .command("update-state")
        .args(["B", "start", "5"])
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(buildstate::exit::OUTPUT),
        "{stderr}"
    );
    assert!(stderr.contains("any write it made is recorded"), "{stderr}");
    assert_eq!(e.state("B")["status"], "running");
    // A reader that went away: like any Unix tool, no error, the outcome unchanged.
    let mut child = e
        .command("update-state")
        .args(["B", "complete", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(e.state("B")["current_state"], 5);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Random text for every value-taking flag of every binary.
    #[test]
    fn random_values_for_every_flag_never_panic(
        value in proptest::string::string_regex("[-+0-9a-zA-Z.,:/ _=\u{e9}\u{1F600}]{0,40}").unwrap(),
        pick in 0usize..1000,
    ) {
        let e = setup();
        let flags: &[(&str, &[&str], &str)] = &[
            ("update-state", &["B", "start", "5"], "--lease-ttl"),
            ("update-state", &["B", "start", "5"], "--owner"),
            ("update-state", &["B", "fail", "5"], "--category"),
            ("update-state", &["B", "fail", "5"], "--error"),
            ("update-state", &["B", "rollback", "--reason", "r"], "--to"),
            ("run-state", &["B", "5"], "--lease-ttl"),
            ("run-state", &["B", "5"], "--timeout"),
            ("run-state", &["B", "5"], "--max-wait"),
            ("run-state", &["B", "5"], "--kill-grace"),
            ("run-state", &["B", "5"], "--stderr-tail"),
            ("monitor", &["check"], "--factor"),
            ("monitor", &["deliver"], "--budget"),
            ("monitor", &["deliver"], "--retention"),
            ("monitor", &["wait", "B", "--until", "5"], "--timeout"),
            ("monitor", &["stats"], "--since"),
            ("monitor", &["stats"], "--builds"),
            ("monitor", &["stats"], "--image"),
            ("monitor", &["metrics"], "--since"),
            ("init-state", &["C", "--cloud", "aws", "--image", "x"], "--meta"),
            ("check-state", &["B"], "--output"),
        ];
        let (tool, base, flag) = flags[pick % flags.len()];
        let mut args: Vec<&str> = base.to_vec();
        let assigned = format!("{flag}={value}");
        args.push(&assigned);
        if tool == "run-state" {
            args.extend(["--", "true"]);
        }
        no_panic(&e, tool, &args, &[], b"");
        // The positional values too.
        no_panic(&e, "update-state", &["B", "start", &value], &[], b"");
        no_panic(&e, "check-state", &[&value], &[], b"");
    }
}
