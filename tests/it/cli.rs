//! The binaries, run for real: every bad input is refused with its documented exit code
//! and writes nothing; every message comes back verbatim.

use crate::util::Env;
use buildstate::exit;
use serde_json::Value;

/// (serial, number of events): the fingerprint that proves "nothing was written".
fn fingerprint(env: &Env, id: &str) -> (u64, usize) {
    let s = env.state(id);
    (
        s["serial"].as_u64().unwrap(),
        s["history"].as_array().unwrap().len(),
    )
}

#[test]
fn a_missing_database_is_an_error_and_nothing_creates_one_but_init() {
    let env = Env::new();
    // A mistyped --db must not read as "no such build: start it".
    for (tool, args) in [
        ("check-state", vec!["img-1", "--json"]),
        ("update-state", vec!["img-1", "start", "5", "--json"]),
        ("update-state", vec!["img-1", "meta", "a=b", "--json"]),
        ("run-state", vec!["img-1", "5", "--json", "--", "true"]),
    ] {
        let r = env.run(tool, &args).code(exit::NO_DATABASE);
        let j = r.json();
        assert_eq!(j["error"]["kind"], "no_database", "{tool}");
        assert!(
            r.stderr.contains("no database at") && r.stderr.contains("init-state"),
            "{}",
            r.stderr
        );
        let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with("state.db"))
            .collect();
        assert!(leftovers.is_empty(), "{tool} left {leftovers:?}");
    }
}

#[test]
fn a_start_repeated_by_the_lease_holder_writes_nothing() {
    let env = Env::new();
    env.init("img-1");
    env.run("update-state", &["img-1", "start", "5", "--owner", "W1"])
        .ok();
    let before = env.state("img-1");
    let again = env
        .run(
            "update-state",
            &["img-1", "start", "5", "--owner", "W1", "--json"],
        )
        .ok()
        .json();
    assert_eq!(
        (again["serial"].as_u64(), again["attempt"].as_u64()),
        (Some(2), Some(1)),
        "{again}"
    );
    assert_eq!(
        env.state("img-1"),
        before,
        "a repeated start wrote something"
    );
    // Another owner is still refused while the lease lives.
    env.run("update-state", &["img-1", "start", "5", "--owner", "W2"])
        .code(exit::BUSY);
}

/// An owner that says nothing (`BUILDSTATE_OWNER=` set empty, spaces) or spans lines
/// would be recorded on every event and matched for the lease: refused, nothing written.
#[test]
fn a_blank_or_multiline_lease_owner_is_refused_and_nothing_is_written() {
    let env = Env::new();
    env.init("img-1");
    let before = env.state("img-1");
    for bad in ["", "   ", "w1\nw2"] {
        let r = env
            .run_with(
                env.command("update-state")
                    .args(["img-1", "start", "5"])
                    .env("BUILDSTATE_OWNER", bad),
                None,
            )
            .code(exit::INVALID_INPUT);
        assert!(
            r.stderr.contains("invalid lease owner") && r.stderr.contains("BUILDSTATE_OWNER"),
            "{bad:?}: {}",
            r.stderr
        );
    }
    env.run("update-state", &["img-1", "meta", "k=v", "--owner", ""])
        .code(exit::INVALID_INPUT);
    assert_eq!(
        env.state("img-1"),
        before,
        "a refused owner wrote something"
    );
    env.run(
        "update-state",
        &["img-1", "start", "5", "--owner", "concourse:images/bake#42"],
    )
    .ok();
}

#[test]
fn a_huge_bad_value_is_named_not_printed() {
    let env = Env::new();
    env.init("img-1");
    let huge = "x".repeat(100_000);
    for (tool, args) in [
        ("update-state", vec![huge.as_str(), "meta", "k=v"]),
        ("update-state", vec!["img-1", "meta", huge.as_str()]),
        ("check-state", vec![huge.as_str()]),
    ] {
        let r = env.run(tool, &args);
        assert_eq!(r.code, exit::INVALID_INPUT, "{tool}");
        assert!(
            r.stderr.len() < 2000,
            "{tool} echoed {} bytes",
            r.stderr.len()
        );
        assert!(r.stderr.contains("(100000 characters)"), "{}", r.stderr);
    }
    // A flag's value too, where clap itself reports it.
    let ttl = format!("{huge}s");
    let r = env.run(
        "update-state",
        &["img-1", "start", "5", "--lease-ttl", &ttl],
    );
    assert_eq!(r.code, exit::USAGE);
    assert!(r.stderr.len() < 2000, "echoed {} bytes", r.stderr.len());
}

#[test]
fn an_empty_file_is_no_database_and_stays_empty() {
    let env = Env::new();
    std::fs::write(&env.db, b"").unwrap();
    for (tool, args) in [
        ("check-state", vec!["real"]),
        ("update-state", vec!["real", "start", "5"]),
        ("run-state", vec!["real", "5", "--", "true"]),
        (
            "sync-cloud",
            vec!["--remote", "file:///tmp/bs-empty", "status"],
        ),
    ] {
        let r = env.run(tool, &args).code(exit::NO_DATABASE);
        assert!(r.stderr.contains("no database at"), "{tool}: {}", r.stderr);
        assert_eq!(
            std::fs::metadata(&env.db).unwrap().len(),
            0,
            "{tool} wrote into it"
        );
        for suffix in ["-wal", "-shm"] {
            let side = format!("{}{suffix}", env.db.display());
            assert!(!std::path::Path::new(&side).exists(), "{tool} left {side}");
        }
    }
    // init-state may make a database of it.
    env.init("real");
    env.run("check-state", &["real"]).ok();
}

#[test]
fn unknown_build_in_an_existing_database_is_start_not_error() {
    let env = Env::new();
    env.init("other");
    let r = env.run("check-state", &["img-1", "--json"]).ok();
    let j = r.json();
    assert_eq!(j["decision"], "start");
    assert_eq!(j["exists"], false);
    // init-state records state 0 as done, so the first state to run is 5.
    assert_eq!(j["next_state"], 5);
    assert_eq!(j["serial"], 0);
    assert!(j["lineage"].is_null());
    let text = env.run("check-state", &["img-1"]).ok().stdout;
    assert!(
        text.contains("start a new build at state 5 (kickstart)"),
        "{text}"
    );
}

#[test]
fn init_records_state_0_as_done_and_the_next_step_is_state_5() {
    let env = Env::new();
    let r = env
        .run(
            "init-state",
            &["img-42", "--cloud", "aws", "--image", "rhel9"],
        )
        .ok();
    assert!(
        r.stdout.contains("state 0 (init) recorded as done"),
        "{}",
        r.stdout
    );
    let j = env.state("img-42");
    assert_eq!(
        (j["current_state"].as_u64(), j["serial"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(j["next_state"], 5);
    env.run("update-state", &["img-42", "start", "5"]).ok();
    env.run("update-state", &["img-42", "complete", "5"]).ok();
    // A plan whose state 0 has work of its own says so, and state 0 comes first.
    let p = env.write(
        "work.toml",
        "name = \"w\"\n[[state]]\nid = 0\nname = \"prep\"\nexpected = \"1m\"\nwork = true\n[[state]]\nid = 5\nname = \"bake\"\nexpected = \"1m\"\n",
    );
    let r = env
        .run(
            "init-state",
            &[
                "w1",
                "--cloud",
                "aws",
                "--image",
                "x",
                "--plan",
                p.to_str().unwrap(),
            ],
        )
        .ok();
    assert!(
        r.stdout.contains("state 0 (prep) has work of its own"),
        "{}",
        r.stdout
    );
    assert_eq!(env.state("w1")["next_state"], 0);
    env.run("update-state", &["w1", "start", "0"]).ok();
}

#[test]
fn init_is_idempotent_and_conflicts_are_refused() {
    let env = Env::new();
    let first = env
        .run(
            "init-state",
            &[
                "b1", "--cloud", "aws", "--image", "rhel9", "--meta", "git=abc", "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(first["created"], true);
    assert_eq!(first["serial"], 1);
    let lineage = first["lineage"].as_str().unwrap().to_string();
    assert_eq!(lineage.len(), 36, "a UUID");

    let again = env
        .run(
            "init-state",
            &[
                "b1", "--cloud", "aws", "--image", "rhel9", "--meta", "git=abc", "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(again["created"], false);
    assert_eq!(again["lineage"], lineage.as_str());
    assert_eq!(fingerprint(&env, "b1"), (1, 1));

    let plan = env.write(
        "p.toml",
        "name = \"short\"\n[[state]]\nid = 0\nname = \"only\"\nexpected = \"1m\"\n",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--cloud", "gcp", "--image", "rhel9"],
            "cloud 'aws', not 'gcp'",
        ),
        (
            vec!["--cloud", "aws", "--image", "ubuntu"],
            "image 'rhel9', not 'ubuntu'",
        ),
        (
            vec!["--cloud", "aws", "--image", "rhel9", "--meta", "git=def"],
            "metadata git 'abc', not 'def'",
        ),
        (
            vec![
                "--cloud",
                "aws",
                "--image",
                "rhel9",
                "--plan",
                plan.to_str().unwrap(),
            ],
            "plan 'classic-image-build'",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["b1"];
        full.extend(args);
        let r = env.run("init-state", &full).code(exit::CONFLICT);
        assert!(r.stderr.contains(want), "{}", r.stderr);
        assert_eq!(fingerprint(&env, "b1"), (1, 1), "conflict wrote something");
    }
}

#[test]
fn bad_transitions_are_refused_with_distinct_codes_and_write_nothing() {
    let env = Env::new();
    env.init("b1");
    env.run("update-state", &["b1", "complete", "5"]).ok();
    let before = fingerprint(&env, "b1");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["b1", "start", "7"],
            exit::REFUSED,
            "state 7 is not in its plan",
        ),
        (
            &["b1", "complete", "200"],
            exit::REFUSED,
            "state 200 is not in its plan",
        ),
        (&["b1", "start", "0"], exit::REFUSED, "move backwards"),
        (&["b1", "complete", "5"], exit::REFUSED, "move backwards"),
        (
            &["b1", "fail", "5", "--error", "x"],
            exit::REFUSED,
            "move backwards",
        ),
        (
            &["b1", "start", "20"],
            exit::REFUSED,
            "the next state is state 10 (green-image-validation)",
        ),
        (
            &["nope", "start", "0"],
            exit::UNKNOWN_BUILD,
            "unknown build 'nope'",
        ),
        (
            &["bad/id", "start", "0"],
            exit::INVALID_INPUT,
            "invalid build id 'bad/id'",
        ),
        (
            &["b1", "meta", "no-equals"],
            exit::INVALID_INPUT,
            "write it as KEY=VALUE",
        ),
        (
            &["b1", "meta", "ok=1", "9bad=2"],
            exit::INVALID_INPUT,
            "invalid metadata key '9bad'",
        ),
        (
            &["b1", "start", "five"],
            exit::USAGE,
            "invalid value 'five'",
        ),
        (&["b1", "fail", "10"], exit::USAGE, "--error"),
        (
            &["b1", "explode", "10"],
            exit::USAGE,
            "unexpected argument 'explode'",
        ),
    ];
    for (args, code, want) in cases {
        let r = env.run("update-state", args).code(*code);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert_eq!(fingerprint(&env, "b1"), before, "{args:?} wrote something");
    }
    // While a state runs, another cannot start; after it fails, only it can be retried.
    env.run("update-state", &["b1", "start", "10"]).ok();
    let r = env
        .run("update-state", &["b1", "start", "15"])
        .code(exit::REFUSED);
    assert!(
        r.stderr
            .contains("state 10 (green-image-validation) is running"),
        "{}",
        r.stderr
    );
    env.run("update-state", &["b1", "fail", "10", "--error", "boom"])
        .ok();
    let r = env
        .run("update-state", &["b1", "complete", "15"])
        .code(exit::REFUSED);
    assert!(
        r.stderr
            .contains("failed and waits for a retry; retry or skip it first"),
        "{}",
        r.stderr
    );
}

#[test]
fn invalid_plan_files_are_refused_naming_the_field() {
    let env = Env::new();
    let cases = [
        ("bad1.toml", "name = \"p\"\n[[state]]\nid = 101\nname = \"a\"\nexpected = \"1m\"\n", "state[0] (id 101).id"),
        ("bad2.toml", "name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nretry = { policy = \"backoff\", max_attempts = 0, initial_delay = \"1m\", max_delay = \"2m\" }\n", "retry.max_attempts"),
        ("bad3.toml", "name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpcted = \"1m\"\n", "unknown field `expcted`"),
    ];
    for (name, body, want) in cases {
        let p = env.write(name, body);
        let r = env
            .run(
                "init-state",
                &[
                    "b1",
                    "--cloud",
                    "aws",
                    "--image",
                    "x",
                    "--plan",
                    p.to_str().unwrap(),
                ],
            )
            .code(exit::INVALID_PLAN);
        assert!(
            r.stderr.contains(name) && r.stderr.contains(want),
            "{}",
            r.stderr
        );
    }
    let r = env
        .run(
            "init-state",
            &[
                "b1",
                "--cloud",
                "aws",
                "--image",
                "x",
                "--plan",
                "missing.toml",
            ],
        )
        .code(exit::INVALID_PLAN);
    assert!(
        r.stderr.contains("missing.toml") && r.stderr.contains("cannot read it"),
        "{}",
        r.stderr
    );
    // Nothing was created: not the build, not even the database.
    assert!(!env.db.exists());
}

#[test]
fn a_custom_plan_is_kept_with_the_build() {
    let env = Env::new();
    let p = env.write("p.toml", "name = \"tiny\"\n[[state]]\nid = 0\nname = \"prep\"\nexpected = \"1m\"\nwork = true\n[[state]]\nid = 50\nname = \"bake\"\nexpected = \"1h\"\n");
    env.run(
        "init-state",
        &[
            "t1",
            "--cloud",
            "azure",
            "--image",
            "win",
            "--plan",
            p.to_str().unwrap(),
        ],
    )
    .ok();
    std::fs::remove_file(&p).unwrap();
    env.run("update-state", &["t1", "complete", "0"]).ok();
    let r = env
        .run("update-state", &["t1", "start", "5"])
        .code(exit::REFUSED);
    assert!(
        r.stderr.contains("plan 'tiny' (states: 0, 50)"),
        "{}",
        r.stderr
    );
    env.run("update-state", &["t1", "complete", "50"]).ok();
    let j = env
        .run("check-state", &["t1", "--json"])
        .code(exit::COMPLETED)
        .json();
    assert_eq!(j["decision"], "completed");
    assert_eq!(j["plan"], "tiny");
}

#[test]
fn messages_are_stored_verbatim() {
    let env = Env::new();
    // A plan that retries at once, many times, so every failure below is accepted.
    let plan = env.write(
        "p.toml",
        "name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nwork = true\nretry = { policy = \"immediate\", max_attempts = 50 }\n",
    );
    let plan = plan.to_str().unwrap();
    env.run(
        "init-state",
        &["b1", "--cloud", "aws", "--image", "x", "--plan", plan],
    )
    .ok();
    let big: String = "it's a 1 MB line; ".repeat((1 << 20) / 18 + 1);
    assert!(big.len() >= 1 << 20);
    let messages = [
        "couldn't reach the mirror: it's down".to_string(),
        "line one\nline two\n\ttabbed".to_string(),
        "unicode: héllo wörld ✓ 日本語 🚀".to_string(),
        "'); DROP TABLE builds;--".to_string(),
        "\"double\" and `back` and $(dollar) and \\backslash".to_string(),
    ];
    let mut expected = Vec::new();
    for m in &messages {
        env.run("update-state", &["b1", "fail", "0", "--error", m])
            .ok();
        expected.push(m.clone());
        let j = env.state("b1");
        assert_eq!(j["last_error"], m.as_str());
    }
    // Over argv's limit: from a file and from stdin.
    let f = env.write("big.txt", &big);
    env.run(
        "update-state",
        &["b1", "fail", "0", "--error-file", f.to_str().unwrap()],
    )
    .ok();
    expected.push(big.clone());
    let stdin_msg = format!("from stdin: {big}");
    env.run_stdin(
        "update-state",
        &["b1", "fail", "0", "--error-file", "-"],
        stdin_msg.as_bytes(),
    )
    .ok();
    expected.push(stdin_msg.clone());

    let j = env.state("b1");
    assert_eq!(j["last_error"], stdin_msg.as_str());
    let stored: Vec<&str> = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "fail")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        stored,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // Every failure was its own attempt of state 0.
    assert_eq!(j["attempt"], expected.len());
    // The builds table survived the injection attempt.
    assert_eq!(j["serial"], 1 + expected.len() as u64);
}

#[test]
fn non_utf8_error_file_is_refused() {
    let env = Env::new();
    env.init("b1");
    let p = env.path("bin.txt");
    std::fs::write(&p, b"ok \xff\xfe bad").unwrap();
    let r = env
        .run(
            "update-state",
            &["b1", "fail", "0", "--error-file", p.to_str().unwrap()],
        )
        .code(exit::INVALID_INPUT);
    assert!(
        r.stderr.contains("not UTF-8 (invalid byte at offset 3)"),
        "{}",
        r.stderr
    );
    assert_eq!(fingerprint(&env, "b1"), (1, 1));
}

/// `--error-file` reads at most 4 MiB: a longer file keeps its end (from a character
/// boundary, saying how much was left out); a longer stream, a folder or a missing
/// file is refused with exit 8 and nothing written.
#[test]
fn error_file_is_bounded_and_bad_ones_are_refused() {
    let env = Env::new();
    env.init("b1");
    let max = buildstate::files::MAX_MESSAGE_FILE as usize;
    // Two-byte characters after an odd-sized head: the cut falls inside one.
    let body = format!("x{}THE END", "é".repeat(max / 2 + 1000));
    let f = env.write("long.log", &body);
    let r = env
        .run(
            "update-state",
            &["b1", "fail", "5", "--error-file", f.to_str().unwrap()],
        )
        .ok();
    assert!(r.stderr.contains("its end is recorded"), "{}", r.stderr);
    let j = env.state("b1");
    let stored = j["last_error"].as_str().unwrap();
    let (note, kept) = stored.split_once('\n').unwrap();
    let left_out: usize = note
        .strip_prefix("[... the first ")
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{note}"));
    assert!(
        note.ends_with(&format!("of {} were left out]", body.len())),
        "{note}"
    );
    assert_eq!(left_out + kept.len(), body.len());
    assert!(kept.len() <= max && kept.len() >= max - 3);
    assert!(kept.starts_with('é') && body.ends_with(kept));
    let before = fingerprint(&env, "b1");
    let dir = env.path("");
    for (path, says) in [
        (dir.to_str().unwrap(), "Is a directory"),
        ("/nonexistent/log", "No such file"),
        ("/dev/zero", "more than 4194304 bytes from /dev/zero"),
    ] {
        let r = env
            .run("update-state", &["b1", "fail", "5", "--error-file", path])
            .code(exit::INVALID_INPUT);
        assert!(r.stderr.contains(says), "{path}: {}", r.stderr);
    }
    let r = env
        .run_stdin(
            "update-state",
            &["b1", "fail", "5", "--error-file", "-"],
            &vec![b'y'; max + 1],
        )
        .code(exit::INVALID_INPUT);
    assert!(r.stderr.contains("on standard input"), "{}", r.stderr);
    assert_eq!(fingerprint(&env, "b1"), before);
}

#[test]
fn secrets_never_reach_the_database() {
    let env = Env::new();
    env.init("b1");
    let hook = "https://hooks.slack.com/services/T0001/B0002/abcdefghijklmnop";
    let msg = format!("post to {hook} failed; AKIAIOSFODNN7EXAMPLE; password=hunter2");
    let r = env
        .run(
            "update-state",
            &["b1", "fail", "5", "--error", &msg, "--json"],
        )
        .ok();
    assert!(!r.stdout.contains("hunter2") && !r.stdout.contains("abcdefghijklmnop"));
    env.run(
        "update-state",
        &["b1", "meta", "api=https://user:s3cretpw@example.com/x"],
    )
    .ok();
    let j = env.state("b1");
    assert_eq!(
        j["last_error"],
        "post to https://hooks.slack.com/[REDACTED] failed; [REDACTED]; password=[REDACTED]"
    );
    assert_eq!(
        j["metadata"]["api"],
        "https://user:[REDACTED]@example.com/x"
    );
    for secret in [
        "hunter2",
        "abcdefghijklmnop",
        "AKIAIOSFODNN7EXAMPLE",
        "s3cretpw",
    ] {
        for suffix in ["", "-wal"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", env.db.display()));
            assert!(
                !crate::util::file_contains(&file, secret.as_bytes()),
                "{secret} found in {}",
                file.display()
            );
        }
    }
}

/// Issue 14: six kinds of secret that reached the database, the alert outbox (so Slack),
/// the remote snapshot and every output. None does now.
#[test]
fn token_formats_and_command_line_passwords_reach_nothing_we_write() {
    let env = Env::new();
    let remote = env.path("remote");
    let url = format!("file://{}", remote.display());
    let secrets = [
        (
            "glpat-AbCdEfGhIjKlMnOpQrSt",
            "remote: token glpat-AbCdEfGhIjKlMnOpQrSt expired",
        ),
        (
            "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
            "id token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlXzEyMw rejected",
        ),
        (
            "dXNlcjpzM2NyM3QtcGFzcw==",
            r#"{"auths": {"reg.example.com": {"auth": "dXNlcjpzM2NyM3QtcGFzcw=="}}}"#,
        ),
        (
            "f1e2d3c4-b5a6-4978",
            "//registry.npmjs.org/:_authToken=f1e2d3c4-b5a6-4978",
        ),
        (
            "Hunter2sshpass",
            "sshpass -p 'Hunter2sshpass' ssh root@10.0.0.5: permission denied",
        ),
        (
            "Curl5ecret",
            "curl -fsS -u admin:Curl5ecret https://nexus.example.com/x: 401",
        ),
    ];
    let mut c = env.command("init-state");
    c.env("BUILDSTATE_REMOTE", &url)
        .args(["b1", "--cloud", "aws", "--image", "rhel9"]);
    env.run_with(&mut c, None).ok();
    let message: String = secrets.iter().map(|(_, m)| format!("{m}\n")).collect();
    let mut c = env.command("update-state");
    c.env("BUILDSTATE_REMOTE", &url).args([
        "b1",
        "fail",
        "5",
        "--category",
        "persistent",
        "--error",
        &message,
        "--json",
    ]);
    let out = env.run_with(&mut c, None).ok();
    let history = env.run("check-state", &["b1", "--history"]).stdout;
    let json = env
        .run("check-state", &["b1", "--history", "--json"])
        .stdout;
    for (secret, _) in secrets {
        for (what, text) in [
            ("update-state --json", &out.stdout),
            ("update-state stderr", &out.stderr),
            ("check-state --history", &history),
            ("check-state --json", &json),
        ] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
        for file in [
            env.db.clone(),
            std::path::PathBuf::from(format!("{}-wal", env.db.display())),
            remote.join("builds/b1.json"),
        ] {
            assert!(
                !crate::util::file_contains(&file, secret.as_bytes()),
                "{secret} found in {}",
                file.display()
            );
        }
    }
    // The blocked alert (its payload is what Slack gets) is queued, redacted like the rest.
    assert!(crate::util::file_contains(
        &remote.join("builds/b1.json"),
        b"\"blocked\""
    ));
}

#[test]
fn whole_plan_to_completion_with_history() {
    let env = Env::new();
    env.init("b1");
    let plan = buildstate::plan::Plan::default_plan();
    // State 0 was recorded as done by init-state.
    for s in &plan.states[1..] {
        let id = s.id.to_string();
        env.run("update-state", &["b1", "start", &id]).ok();
        let busy = env
            .run("check-state", &["b1", "--json"])
            .code(exit::BUSY)
            .json();
        assert_eq!(busy["decision"], "busy");
        assert_eq!(busy["next_state"], s.id);
        env.run("update-state", &["b1", "complete", &id]).ok();
    }
    let j = env
        .run("check-state", &["b1", "--json", "--history"])
        .code(exit::COMPLETED)
        .json();
    assert_eq!(j["status"], "completed");
    assert_eq!(j["current_state"], 100);
    let n = plan.states.len() as u64 - 1;
    assert_eq!(j["serial"], 1 + 2 * n);
    let history = j["history"].as_array().unwrap();
    assert_eq!(history.len() as u64, 1 + 2 * n);
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        assert_eq!(e["serial"], i as u64 + 1);
    }
    let r = env
        .run("update-state", &["b1", "start", "100"])
        .code(exit::REFUSED);
    assert!(r.stderr.contains("already completed"), "{}", r.stderr);
    // Metadata may still be added after completion (e.g. the published image id).
    env.run("update-state", &["b1", "meta", "ami_id=ami-0123"])
        .ok();
}

#[test]
fn output_dir_files_can_be_sourced() {
    let env = Env::new();
    env.run(
        "init-state",
        &[
            "b1",
            "--cloud",
            "aws",
            "--image",
            "rhel9",
            "--meta",
            "note=it's $HOME",
        ],
    )
    .ok();
    env.run("update-state", &["b1", "complete", "5"]).ok();
    let out = env.path("out");
    let r = env
        .run("check-state", &["b1", "--output", out.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout
            .contains("resume at state 10 (green-image-validation)"),
        "{}",
        r.stdout
    );
    let decision: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("decision.json")).unwrap()).unwrap();
    assert_eq!(decision["decision"], "resume");
    assert_eq!(decision["next_state"], 10);
    let script = format!(
        ". '{}' && printf '%s|%s|%s|%s' \"$RESUME_STATE\" \"$BUILDSTATE_DECISION\" \"$BUILDSTATE_META_note\" \"$BUILDSTATE_SERIAL\"",
        out.join("resume-metadata").display()
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "10|resume|it's $HOME|2"
    );
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["decision.json", "resume-metadata"],
        "temporary files left"
    );
    // A path that is a file, not a directory: refused up front (exit 8), left alone.
    let file = env.write("not-a-dir", "keep me");
    let r = env
        .run("check-state", &["b1", "--output", file.to_str().unwrap()])
        .code(exit::INVALID_INPUT);
    assert!(
        r.stderr.contains("exists and is not a directory"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn json_report_has_the_documented_fields() {
    let env = Env::new();
    env.init("b1");
    env.run(
        "update-state",
        &[
            "b1",
            "fail",
            "5",
            "--error",
            "nope",
            "--category",
            "persistent",
            "--exit-code",
            "3",
        ],
    )
    .ok();
    let j = env
        .run("check-state", &["b1", "--json"])
        .code(exit::BLOCKED)
        .json();
    for key in [
        "build_id",
        "current_state",
        "status",
        "decision",
        "next_state",
        "serial",
        "lineage",
        "last_error",
        "reason",
        "exit_code",
    ] {
        assert!(j.get(key).is_some(), "missing {key}: {j}");
    }
    assert_eq!(j["status"], "blocked");
    assert_eq!(j["decision"], "blocked");
    assert_eq!(j["last_category"], "persistent");
    assert_eq!(j["exit_code"], exit::BLOCKED);
    assert_eq!(j["current_state"], 0);
    let e = &env.state("b1")["history"][1];
    assert_eq!(
        (
            e["kind"].as_str(),
            e["exit_code"].as_i64(),
            e["category"].as_str()
        ),
        (Some("fail"), Some(3), Some("persistent"))
    );
}

#[test]
fn errors_have_a_json_twin() {
    let env = Env::new();
    env.init("other");
    let r = env
        .run("update-state", &["ghost", "start", "0", "--json"])
        .code(exit::UNKNOWN_BUILD);
    let j = r.json();
    assert_eq!(j["error"]["kind"], "unknown_build");
    assert_eq!(j["error"]["exit_code"], exit::UNKNOWN_BUILD);
    assert!(j["error"]["message"]
        .as_str()
        .unwrap()
        .contains("init-state ghost"));
    assert!(
        r.stderr
            .starts_with("update-state: error: unknown build 'ghost'"),
        "{}",
        r.stderr
    );
}

#[test]
fn actor_records_concourse_context() {
    let env = Env::new();
    let mut cmd = env.command("init-state");
    cmd.args(["b1", "--cloud", "aws", "--image", "x"])
        .env("USER", "ci-worker")
        .env("BUILD_ID", "991")
        .env("BUILD_PIPELINE_NAME", "images")
        .env("BUILD_JOB_NAME", "bake")
        .env("ATC_EXTERNAL_URL", "https://ci.example.com");
    env.run_with(&mut cmd, None).ok();
    let actor = &env.state("b1")["history"][0]["actor"];
    assert_eq!(actor["user"], "ci-worker");
    assert_eq!(actor["tool"], "init-state");
    assert!(actor["pid"].as_u64().unwrap() > 0);
    assert!(!actor["host"].as_str().unwrap().is_empty());
    assert_eq!(actor["context"]["BUILD_ID"], "991");
    assert_eq!(actor["context"]["BUILD_PIPELINE_NAME"], "images");
    assert_eq!(actor["context"]["BUILD_JOB_NAME"], "bake");
    assert_eq!(
        actor["context"]["ATC_EXTERNAL_URL"],
        "https://ci.example.com"
    );
    assert!(actor["context"].get("BUILD_URL").is_none());
}

#[test]
fn database_from_env_var_and_bad_databases() {
    let env = Env::new();
    // BUILDSTATE_DB is honoured when --db is absent.
    let other = env.path("sub/dir/other.db");
    let mut cmd = std::process::Command::new(crate::util::bin("init-state"));
    cmd.args(["b1", "--cloud", "aws", "--image", "x"])
        .env("BUILDSTATE_DB", &other)
        .env_remove("BUILDSTATE_PLAN");
    env.run_with(&mut cmd, None).ok();
    assert!(other.exists());

    // A database from a newer schema is refused, and not modified.
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let mut cmd = std::process::Command::new(crate::util::bin("check-state"));
    cmd.args(["b1"]).env("BUILDSTATE_DB", &other);
    let r = env.run_with(&mut cmd, None).code(exit::DATABASE);
    assert!(
        r.stderr.contains("newer buildstate (schema version 99"),
        "{}",
        r.stderr
    );

    // Some other SQLite file is refused, not adopted.
    let foreign = env.path("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let mut cmd = std::process::Command::new(crate::util::bin("init-state"));
    cmd.args([
        "b1",
        "--cloud",
        "aws",
        "--image",
        "x",
        "--db",
        foreign.to_str().unwrap(),
    ]);
    let r = env.run_with(&mut cmd, None).code(exit::DATABASE);
    assert!(
        r.stderr.contains("not a buildstate database"),
        "{}",
        r.stderr
    );

    // A directory: named as such, for init-state and the rest alike; nothing created.
    let dir = env.path("sub");
    for args in [
        &["init-state", "b1", "--cloud", "aws", "--image", "x"][..],
        &["check-state", "b1"],
    ] {
        let r = env
            .run_with(env.command_on(args[0], &dir).args(&args[1..]), None)
            .code(exit::DATABASE);
        assert!(
            r.stderr.contains("is a directory, not a database file")
                && r.stderr.contains("buildstate.db"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(!dir.join("buildstate.db").exists());

    // A file that is not SQLite at all.
    let junk = env.write("junk.db", &"not sqlite ".repeat(100));
    let mut cmd = std::process::Command::new(crate::util::bin("check-state"));
    cmd.args(["b1", "--db", junk.to_str().unwrap()]);
    let r = env.run_with(&mut cmd, None).code(exit::DATABASE);
    assert!(
        r.stderr.contains("not a database") || r.stderr.contains("not a buildstate database"),
        "{}",
        r.stderr
    );
}

#[test]
fn events_are_append_only() {
    let env = Env::new();
    env.init("b1");
    crate::util::assert_append_only(&env.db, "UPDATE events SET message = 'x'");
    crate::util::assert_append_only(&env.db, "DELETE FROM events");
}

#[test]
fn help_is_clear() {
    for (bin, want) in [
        ("init-state", "--cloud <PROVIDER>"),
        ("update-state", "Actions:"),
        ("check-state", "--output <DIR>"),
        ("run-state", "--max-wait <DURATION>"),
    ] {
        let out = std::process::Command::new(crate::util::bin(bin))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains(want) && text.contains("--db <PATH>") && text.contains("--json"),
            "{bin}: {text}"
        );
        assert!(
            text.contains("BUILDSTATE_DB"),
            "{bin} should name its environment variable"
        );
    }
}

#[test]
fn exit_code_doc_matches_the_constants() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/exit-codes.md"))
        .unwrap();
    for (code, name) in exit::ALL {
        let row = format!("| {code} | `{name}` |");
        assert!(
            doc.contains(&row),
            "docs/exit-codes.md lacks the row starting {row}"
        );
    }
}

#[test]
fn update_state_start_takes_a_lease_that_expires_and_fences_late_writes() {
    let env = Env::new();
    env.init("b1");
    let r = env
        .run("update-state", &["b1", "start", "5", "--owner", "alice"])
        .ok();
    assert!(
        r.stdout.contains("alice holds the lease until"),
        "{}",
        r.stdout
    );
    // Without --lease-ttl the lease lasts the state's timeout (kickstart: 2h).
    let j = env
        .run("check-state", &["b1", "--json"])
        .code(exit::BUSY)
        .json();
    assert_eq!(j["lease_owner"], "alice");
    // Another owner cannot finish or restart it while the lease lives.
    for args in [
        vec!["b1", "complete", "5", "--owner", "bob"],
        vec!["b1", "start", "5", "--owner", "bob"],
    ] {
        let r = env.run("update-state", &args).code(exit::BUSY);
        assert!(r.stderr.contains("held by alice"), "{}", r.stderr);
    }
    env.run("update-state", &["b1", "complete", "5", "--owner", "alice"])
        .ok();

    // A short lease that nobody renews: the state becomes resumable.
    env.run(
        "update-state",
        &["b1", "start", "10", "--owner", "alice", "--lease-ttl", "1s"],
    )
    .ok();
    crate::util::poll_until("the unrenewed lease to run out", || {
        env.run("check-state", &["b1"]).code == exit::OK
    });
    // bob takes over (attempt 2); alice's late, fenced result is refused.
    env.run("update-state", &["b1", "start", "10", "--owner", "bob"])
        .ok();
    let before = fingerprint(&env, "b1");
    let r = env
        .run(
            "update-state",
            &[
                "b1",
                "complete",
                "10",
                "--owner",
                "alice",
                "--attempt",
                "1",
                "--json",
            ],
        )
        .code(exit::LEASE_LOST);
    assert_eq!(r.json()["error"]["kind"], "lease_lost");
    assert!(r.stderr.contains("no longer current"), "{}", r.stderr);
    assert_eq!(fingerprint(&env, "b1"), before);
    env.run(
        "update-state",
        &["b1", "complete", "10", "--owner", "bob", "--attempt", "2"],
    )
    .ok();
}

#[test]
fn usage_errors_follow_json_too() {
    let env = Env::new();
    for (tool, args) in [
        ("update-state", vec!["b1", "frobnicate", "--json"]),
        ("check-state", vec!["--json", "--no-such-flag", "b1"]),
        ("init-state", vec!["b1", "--json"]),
        ("run-state", vec!["b1", "5", "--json"]),
    ] {
        let r = env.run(tool, &args).code(exit::USAGE);
        let j = r.json();
        assert_eq!(j["error"]["kind"], "usage", "{tool}");
        assert_eq!(j["error"]["exit_code"], exit::USAGE);
        assert!(!j["error"]["message"].as_str().unwrap().is_empty());
        assert!(r.stderr.contains("Usage:"), "{}", r.stderr);
    }
    // Without --json, stdout stays empty; --help is not an error.
    assert!(env
        .run("update-state", &["b1", "frobnicate"])
        .code(exit::USAGE)
        .stdout
        .is_empty());
    assert!(env
        .run("check-state", &["--help"])
        .ok()
        .stdout
        .contains("Usage:"));
}

#[test]
fn error_paths_that_echo_input_redact_it() {
    let env = Env::new();
    env.run(
        "init-state",
        &[
            "b1",
            "--cloud",
            "aws",
            "--image",
            "rhel9",
            "--meta",
            "url=https://x/y",
        ],
    )
    .ok();
    let secret = "https://deploy:hunter2pw@git.example.com/r.git";
    let r = env
        .run(
            "init-state",
            &[
                "b1",
                "--cloud",
                "aws",
                "--image",
                "rhel9",
                "--meta",
                &format!("url={secret}"),
                "--json",
            ],
        )
        .code(exit::CONFLICT);
    assert!(r.stderr.contains("deploy:[REDACTED]@"), "{}", r.stderr);
    let token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    let bad_cloud = format!("{token}\n");
    let bad_id = format!("{token}!");
    for (tool, args) in [
        ("update-state", vec!["b1", "meta", token, "--json"]),
        ("update-state", vec![&bad_id, "meta", "a=b", "--json"]),
        ("update-state", vec!["b1", "start", token, "--json"]),
        (
            "init-state",
            vec!["b2", "--cloud", &bad_cloud, "--image", "x", "--json"],
        ),
        ("check-state", vec![&bad_id, "--json"]),
    ] {
        let r = env.run(tool, &args);
        assert_ne!(r.code, 0);
        for out in [&r.stdout, &r.stderr] {
            assert!(
                !out.contains("hunter2pw") && !out.contains(token),
                "{tool}: {out}"
            );
        }
    }
    assert!(!r.stdout.contains("hunter2pw"), "{}", r.stdout);
}

/// Issue 18, what a new user tripped on.
#[test]
fn usage_errors_and_typos_say_what_to_do() {
    let env = Env::new();
    env.init("img-42");
    // The missing argument is named in --json too.
    let r = env.run("check-state", &["--json"]).code(exit::USAGE);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("<BUILD_ID>"),
        "{}",
        r.stdout
    );
    // A command without `--` before it gets the tip.
    let r = env
        .run("run-state", &["img-42", "5", "true"])
        .code(exit::USAGE);
    assert!(r.stderr.contains("goes after --"), "{}", r.stderr);
    // A mistyped build id: still "start" (exit 0), with the similar ids on stderr.
    let r = env.run("check-state", &["img42"]).ok();
    assert!(r.stderr.contains("similar ids: img-42"), "{}", r.stderr);
    assert!(env
        .run("check-state", &["zzz-unrelated"])
        .ok()
        .stderr
        .is_empty());
}

/// `--help` names the variables but never prints their values: a remote URL can carry
/// credentials, and the caller's settings are not documentation.
#[test]
fn help_names_the_variables_without_their_values() {
    let env = Env::new();
    for args in [
        &["init-state", "--help"][..],
        &["check-state", "--help"],
        &["update-state", "--help"],
        &["update-state", "b1", "start", "--help"],
        &["run-state", "--help"],
        &["sync-cloud", "push", "--help"],
        &["monitor", "status", "--help"],
    ] {
        let r = env
            .run_with(
                env.command(args[0])
                    .args(&args[1..])
                    .env("BUILDSTATE_REMOTE", "s3://AKIAEXAMPLE:hunter2pw@bucket/x")
                    .env("BUILDSTATE_OWNER", "owner-hunter2pw")
                    .env("BUILDSTATE_INPUTS_ROOT", "/srv/hunter2pw"),
                None,
            )
            .ok();
        assert!(
            r.stdout.contains("[env: BUILDSTATE_REMOTE]"),
            "{args:?}: {}",
            r.stdout
        );
        assert!(!r.stdout.contains("hunter2pw"), "{args:?}: {}", r.stdout);
    }
}

/// `monitor wait --until` a state the build's plan does not have is refused at once
/// (exit 8), not waited on until the timeout.
#[test]
fn monitor_wait_refuses_a_state_the_plan_does_not_have() {
    let env = Env::new();
    env.init("img-42");
    let r = env
        .run(
            "monitor",
            &["wait", "img-42", "--until", "7", "--timeout", "5s"],
        )
        .code(exit::INVALID_INPUT);
    assert!(
        r.stderr.contains("has no state 7") && r.stderr.contains("0, 5, 10"),
        "{}",
        r.stderr
    );
    let r = env
        .run(
            "monitor",
            &[
                "wait",
                "img-42",
                "--until",
                "0",
                "--timeout",
                "10m",
                "--json",
            ],
        )
        .ok();
    assert_eq!(r.json()["outcome"], "reached");
}

/// A bad value that came from the environment is blamed on its variable (never echoing
/// a value clap would not); one typed on the command line is not.
#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let env = Env::new();
    env.init("img-42");
    let out = std::process::Command::new(crate::util::bin("check-state"))
        .args(["img-42", "--json"])
        .env("BUILDSTATE_DB", "")
        .env("HOME", env.path(""))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit::USAGE));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tip: the value comes from BUILDSTATE_DB, which is set but empty"),
        "{stderr}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = j["error"]["message"].as_str().unwrap();
    assert!(message.contains("BUILDSTATE_DB"), "{message}");
    assert!(!message.contains("For more information"), "{message}");
    for (var, value, args, says) in [
        (
            "BUILDSTATE_INPUTS_ROOT",
            "",
            &["img-42", "--next", "--", "true"][..],
            "BUILDSTATE_INPUTS_ROOT, which is set but empty",
        ),
        (
            "BUILDSTATE_LEASE_TTL",
            "5x",
            &["img-42", "--next", "--", "true"],
            "BUILDSTATE_LEASE_TTL: fix it there, or pass --lease-ttl",
        ),
    ] {
        let r = env
            .run_with(env.command("run-state").args(args).env(var, value), None)
            .code(exit::USAGE);
        assert!(r.stderr.contains(says), "{var}: {}", r.stderr);
    }
    // Typed on the command line: clap's own message, no tip.
    let r = env
        .run(
            "run-state",
            &["img-42", "--next", "--lease-ttl", "5x", "--", "true"],
        )
        .code(exit::USAGE);
    assert!(!r.stderr.contains("tip:"), "{}", r.stderr);
}

#[test]
fn the_concourse_resource_answers_help_without_stdin_and_without_colour() {
    let bin = crate::util::bin("concourse-resource");
    // With stdin held open (reading it would hang): --help answers, and a mistyped
    // option, step or folder count is a usage error, all before the request is read.
    let answer = |args: &[&str]| {
        let mut child = std::process::Command::new(&bin)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        crate::util::poll_until("an answer without stdin", || {
            child.try_wait().unwrap().is_some()
        });
        child.wait_with_output().unwrap()
    };
    let out = answer(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("concourse-resource check"));
    for (args, says) in [
        (&["--bogus"][..], "unexpected argument '--bogus'"),
        (&["check", "--bogus"], "unexpected argument '--bogus'"),
        (&["chek"], "similar subcommand exists: 'check'"),
        (&["in"], "<DEST>"),
        (&["out", "a", "b"], "unexpected argument 'b'"),
    ] {
        let out = answer(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = answer(&["check", "--bogus", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["error"]["kind"], "usage");
    let out = std::process::Command::new(&bin)
        .args(["check", "--json"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::INVALID_INPUT), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a log: {stderr:?}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["error"]["kind"], "invalid_input");
}

/// Every command, by its installed name.
const COMMANDS: [&str; 7] = [
    "init-state",
    "check-state",
    "update-state",
    "run-state",
    "sync-cloud",
    "monitor",
    "concourse-resource",
];

/// Issue 18: `scripts/install` puts a man page and bash, zsh and fish completions next to
/// every command, generated from the clap definitions; each man page names every flag
/// the command's --help shows.
#[test]
fn every_command_gets_completions_and_a_man_page_naming_every_flag() {
    let prefix = tempfile::tempdir().unwrap();
    let bindir = crate::util::bin("init-state")
        .parent()
        .unwrap()
        .to_path_buf();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/install"))
        .arg("--from")
        .arg(&bindir)
        .arg("--prefix")
        .arg(prefix.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flag = regex::Regex::new(r"--[a-z][a-z0-9-]*").unwrap();
    let mandir = prefix.path().join("share/man/man1");
    let mut pages = 0;
    for c in COMMANDS {
        let share = prefix.path().join("share");
        // The command's page and, through the pages each refers to, every subcommand's:
        // each names every flag of its --help, and its synopsis shows the values.
        let mut todo = vec![(c.to_string(), Vec::<String>::new())];
        while let Some((page, words)) = todo.pop() {
            pages += 1;
            let path = mandir.join(format!("{page}.1"));
            let man = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (referred to, not generated)", path.display()));
            assert!(
                man.contains(&format!(".TH {page} 1 ")),
                "{page}: {}",
                &man[..200]
            );
            let plain = man.replace("\\-", "-");
            let env = crate::util::Env::new();
            let mut cmd = env.command(c);
            if c == "concourse-resource" {
                // It has no --db (the request's source says where the build is).
                cmd = std::process::Command::new(crate::util::bin(c));
            }
            // update-state's actions come after the build id.
            if c == "update-state" && !words.is_empty() {
                cmd.arg("img-1");
            }
            let help = env.run_with(cmd.args(&words).arg("--help"), None);
            assert_eq!(help.code, 0, "{page}: {}", help.stderr);
            for f in flag.find_iter(&help.stdout) {
                assert!(
                    plain.contains(f.as_str()),
                    "{page}: the man page does not name {}",
                    f.as_str()
                );
            }
            if help.stdout.contains("--db <PATH>") {
                assert!(
                    plain.contains("[\\fB--db\\fR \\fIPATH\\fR]"),
                    "{page}: the synopsis hides --db's value"
                );
            }
            // Its subcommands' pages, as its subcommand section lists them (`NAME(1)`).
            for name in plain.lines().filter_map(|l| l.strip_suffix("(1)")) {
                let Some(sub) = name.strip_prefix(&format!("{page}-")) else {
                    continue;
                };
                let mut next = words.clone();
                next.push(sub.to_string());
                todo.push((name.to_string(), next));
            }
        }
        for (dir, file, needle) in [
            (
                "bash-completion/completions",
                c.to_string(),
                format!("complete -F _{}", c.replace('-', "__")),
            ),
            (
                "zsh/site-functions",
                format!("_{c}"),
                format!("#compdef {c}"),
            ),
            (
                "fish/vendor_completions.d",
                format!("{c}.fish"),
                format!("complete -c {c}"),
            ),
        ] {
            let text = std::fs::read_to_string(share.join(dir).join(&file)).unwrap();
            assert!(
                text.contains(&needle),
                "{c}: {dir}/{file} lacks '{needle}':\n{}",
                &text[..text.len().min(400)]
            );
        }
        assert!(prefix.path().join("bin").join(c).is_file());
    }
    assert!(pages > 40, "{pages} man pages");
    // mandoc, the BSDs' and many Linuxes' man, finds nothing to warn about in any page.
    let lint = std::process::Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning"])
        .args(
            std::fs::read_dir(&mandir)
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .output()
        .expect("mandoc (Debian's mandoc package) is installed by scripts/test");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // More than one folder, or anything after a shell, is a usage error too.
    for extra in [
        &["--generate", "man", "a", "b"][..],
        &["--generate", "bash", "x"][..],
    ] {
        let r = crate::util::Env::new().run("check-state", extra);
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
    }
    // A wrong request is a usage error, not an empty file.
    let r = crate::util::Env::new().run("check-state", &["--generate", "powershell2"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// Issue 18: one executable, `buildstate`, runs every command under its name (a link),
/// or as `buildstate COMMAND`; the Concourse steps by their names too. Same answers as
/// the single-command executables.
#[test]
fn the_one_executable_runs_each_command_by_the_name_it_is_called() {
    let e = Env::new();
    let one = std::path::PathBuf::from(env!("CARGO_BIN_EXE_buildstate"));
    let links = e.path("bin");
    std::fs::create_dir_all(&links).unwrap();
    for name in COMMANDS.iter().chain(&["check"]) {
        std::os::unix::fs::symlink(&one, links.join(name)).unwrap();
    }
    let run = |program: &std::path::Path, args: &[&str]| {
        let mut c = std::process::Command::new(program);
        c.env_remove("BUILDSTATE_DB")
            .env_remove("BUILDSTATE_REMOTE");
        c.args(args).env("BUILDSTATE_DB", &e.db);
        let out = c.output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let db = e.db.to_str().unwrap();
    let (code, _, err) = run(
        &links.join("init-state"),
        &["img-1", "--cloud", "aws", "--image", "rhel9", "--db", db],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &one,
        &["update-state", "img-1", "complete", "5", "--db", db],
    );
    assert_eq!(code, 0, "{err}");
    for program in [links.join("check-state"), one.clone()] {
        let args: &[&str] = if program == one {
            &["check-state", "img-1", "--json", "--db", db]
        } else {
            &["img-1", "--json", "--db", db]
        };
        let (code, out, err) = run(&program, args);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["current_state"].as_u64(), v["next_state"].as_u64()),
            (Some(5), Some(10))
        );
    }
    // --help and usage errors name the command, not the executable.
    // (The environment line shows a value when the variable is set: not compared.)
    let same = |text: String| {
        text.lines()
            .filter(|l| !l.contains("[env: BUILDSTATE_DB="))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let single = same(e.run("check-state", &["--help"]).stdout);
    assert_eq!(
        same(run(&links.join("check-state"), &["--db", db, "--help"]).1),
        single
    );
    assert_eq!(
        same(run(&one, &["check-state", "--db", db, "--help"]).1),
        single
    );
    let (code, _, err) = run(&one, &["check-state", "--bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage: check-state"), "{err}");
    // The Concourse step by its name.
    let (code, out, _) = run(&links.join("check"), &["--help"]);
    assert!(
        code == 0 && out.contains("concourse-resource check"),
        "{out}"
    );
    // Unknown and missing commands are usage errors that list the commands.
    let (code, _, err) = run(&one, &["frobnicate"]);
    assert!(
        code == 2 && err.contains("unknown command 'frobnicate'") && err.contains("check-state"),
        "{err}"
    );
    let (code, out, _) = run(&one, &["--list"]);
    assert_eq!((code, out.lines().count()), (0, 7));
}

/// Issue 18: with BUILDSTATE_DB (or BUILDSTATE_REMOTE) set, a usage error's usage line
/// does not show `--db <PATH>` as if it were required; typed, it is shown as typed.
#[test]
fn usage_lines_show_only_the_options_typed() {
    let e = Env::new();
    let mut c = std::process::Command::new(crate::util::bin("check-state"));
    c.env("BUILDSTATE_DB", &e.db).env(
        "BUILDSTATE_REMOTE",
        format!("file://{}", e.dir.path().display()),
    );
    let out = c.output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let usage = err.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert_eq!(usage, "Usage: check-state <BUILD_ID>", "{err}");
    let r = e.run("check-state", &[]);
    let usage = r
        .stderr
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap()
        .to_string();
    assert!(usage.contains("--db <PATH>"), "{usage}");
}

/// A snapshot key file that cannot be read is bad input (exit 8) naming the variable,
/// not an I/O failure, and nothing is read or written without the keys.
#[test]
fn an_unreadable_snapshot_key_file_is_named() {
    let e = Env::new();
    e.init("b1");
    let remote = format!("file://{}", e.path("remote").display());
    std::fs::create_dir_all(e.path("remote")).unwrap();
    let r = e.run_with(
        e.command("check-state")
            .args(["b1", "--remote", &remote])
            .env("BUILDSTATE_SNAPSHOT_KEY_FILE", e.path("no-such-key")),
        None,
    );
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(
        r.stderr.contains("BUILDSTATE_SNAPSHOT_KEY_FILE") && r.stderr.contains("no-such-key"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_dir(e.path("remote")).unwrap().count(), 0);
}

#[test]
fn stored_control_and_bidi_characters_cannot_rewrite_what_a_person_reads() {
    let env = Env::new();
    env.init("b");
    let error = "real cause\r\x1b[Kall good \u{202e}gnp.exe\u{85}x";
    env.run("update-state", &["b", "start", "5"]).ok();
    env.run("update-state", &["b", "fail", "5", "--error", error])
        .ok();
    let human = env.run("check-state", &["b"]).stdout;
    assert!(
        !human.contains(['\r', '\x1b', '\u{202e}', '\u{85}']),
        "{human:?}"
    );
    assert!(
        human.contains(r"real cause\u000d\u001b[Kall good \u202egnp.exe\u0085x"),
        "{human}"
    );
    // JSON keeps the exact text.
    let j = env.run("check-state", &["b", "--json"]).json();
    assert_eq!(j["last_error"], error);
    // So does the page: the character is shown, not obeyed.
    let page = env.path("b.html");
    env.run("check-state", &["b", "--html", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains(['\u{202e}', '\x1b']),
        "raw control in the page"
    );
    assert!(html.contains(r"\u202egnp.exe"));
}

#[test]
fn an_html_page_into_a_missing_directory_is_refused_naming_it() {
    let env = Env::new();
    env.init("b");
    let r = env.run("check-state", &["b", "--html", "/nonexistent/x.html"]);
    assert_eq!(r.code, exit::INVALID_INPUT, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the directory /nonexistent does not exist"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains(".buildstate"),
        "a temporary name leaked: {}",
        r.stderr
    );
}

#[test]
fn stats_print_an_error_as_it_was_written() {
    let env = Env::new();
    env.init("b");
    env.run("update-state", &["b", "start", "5"]).ok();
    env.run(
        "update-state",
        &["b", "fail", "5", "--error", "it's broken \"badly\""],
    )
    .ok();
    let out = env.run("monitor", &["stats"]).ok().stdout;
    assert!(out.contains("it's broken \"badly\""), "{out}");
}

#[test]
fn stats_keep_two_plans_states_of_one_number_apart() {
    let env = Env::new();
    for (plan, name) in [("p-alpha", "alpha"), ("p-beta", "beta")] {
        let file = env.write(
            &format!("{plan}.toml"),
            &format!(
                "name = \"{plan}\"\n[[state]]\nid = 10\nname = \"{name}\"\nexpected = \"1m\"\n"
            ),
        );
        let id = format!("b-{name}");
        env.run(
            "init-state",
            &[
                &id,
                "--cloud",
                "aws",
                "--image",
                "x",
                "--plan",
                file.to_str().unwrap(),
            ],
        )
        .ok();
        env.run("update-state", &[&id, "start", "10"]).ok();
        env.run("update-state", &[&id, "complete", "10"]).ok();
    }
    let j = env.run("monitor", &["stats", "--json"]).ok().json();
    let states: Vec<(String, u64, String, u64)> = j["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["plan"].as_str().unwrap().to_string(),
                s["state"].as_u64().unwrap(),
                s["name"].as_str().unwrap().to_string(),
                s["runs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("p-alpha".into(), 10, "alpha".into(), 1),
            ("p-beta".into(), 10, "beta".into(), 1)
        ]
    );
    let text = env.run("monitor", &["stats"]).ok().stdout;
    assert!(text.contains("p-alpha") && text.contains("beta"), "{text}");
    let metrics = env.run("monitor", &["metrics"]).ok().stdout;
    assert!(
        metrics.contains("buildstate_state_runs{plan=\"p-beta\",state=\"10\",name=\"beta\"} 1"),
        "{metrics}"
    );
}

#[test]
fn monitor_verify_refuses_a_zero_verify_timeout() {
    // Every verify would time out at once and be recorded as unverified.
    let env = Env::new();
    env.init("b");
    let r = env.run("monitor", &["verify", "--verify-timeout", "0s"]);
    assert_eq!(r.code, exit::USAGE, "{}", r.stderr);
    assert!(r.stderr.contains("--verify-timeout"), "{}", r.stderr);
    env.run("monitor", &["verify", "--concurrency", "0"])
        .code(exit::USAGE);
}

/// Issue 26: one table of environment variables (src/domain/settings.rs). README's table names
/// exactly the variables in it, and every variable the code reads is in it.
#[test]
fn every_variable_is_in_the_settings_table_and_readme() {
    use buildstate::settings::{var, VARS};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let name = regex::Regex::new(r"BUILDSTATE_[A-Z_]*[A-Z]").unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut in_readme = std::collections::BTreeSet::new();
    for line in readme.lines().filter(|l| l.starts_with("| `BUILDSTATE_")) {
        let first = line.split('|').nth(1).unwrap();
        for m in name.find_iter(first) {
            in_readme.insert(m.as_str().to_string());
        }
    }
    for m in &in_readme {
        assert!(
            var(m).or_else(|| var(&format!("{m}_"))).is_some(),
            "README's {m} is not in src/domain/settings.rs"
        );
    }
    for v in VARS {
        let shown = v.name.trim_end_matches('_');
        assert!(
            in_readme.iter().any(|r| r.starts_with(shown)),
            "{} is not in README's table of variables",
            v.name
        );
    }
    // Reads in the code: env::var("…"), env::var_os("…"), the readers of
    // src/app/environment.rs (text, os, duration) and Slack's (secret), clap's env = "…",
    // Python's os.environ.get("…") and os.environ["…"].
    let read = regex::Regex::new(
        r#"(?:env::var(?:_os)?\(|\b(?:text|os|duration)\(|secret\(&get, |env = |environ\.get\(|environ\[|getenv\()"(BUILDSTATE_[A-Z_]+)""#,
    )
    .unwrap();
    let mut files = Vec::new();
    for dir in [
        "src",
        "bins",
        "python/src",
        "python/buildstate",
        "ansible/collection/plugins",
    ] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs" || x == "py") {
                    files.push(p);
                }
            }
        }
    }
    let mut seen = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for c in read.captures_iter(&text) {
            let v = &c[1];
            seen += 1;
            if v.starts_with("BUILDSTATE_TEST_") {
                continue; // test fail points, documented nowhere on purpose
            }
            assert!(
                var(v).is_some(),
                "{} reads {v}, which src/domain/settings.rs does not list",
                f.display()
            );
        }
    }
    assert!(seen > 20, "the scan found only {seen} reads");
}

/// Issue 26: a bad Slack budget or retry delay used to fall back to the default, silently,
/// after the write; like every other variable it is refused first, nothing written.
#[test]
fn a_bad_slack_variable_is_refused_before_the_write() {
    let env = Env::new();
    env.init("b");
    let before = env.state("b")["serial"].clone();
    for var in ["BUILDSTATE_SLACK_BUDGET", "BUILDSTATE_SLACK_RETRY_DELAY"] {
        let r = env
            .run_with(
                env.command("update-state")
                    .args(["b", "meta", "k=v"])
                    .env(var, "5x"),
                None,
            )
            .code(exit::INVALID_INPUT);
        assert!(r.stderr.contains(var), "{}", r.stderr);
        assert_eq!(env.state("b")["serial"], before);
    }
}
