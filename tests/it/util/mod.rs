//! Helpers for tests that run the real binaries: each test gets its own temp directory
//! and database, and the project's environment variables are cleared so that the
//! developer's own settings cannot leak in.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

/// The outcome of one run of a binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(self, want: i32) -> Run {
        assert_eq!(
            self.code, want,
            "expected exit {want}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "init-state" => PathBuf::from(env!("CARGO_BIN_EXE_init-state")),
        "update-state" => PathBuf::from(env!("CARGO_BIN_EXE_update-state")),
        "check-state" => PathBuf::from(env!("CARGO_BIN_EXE_check-state")),
        "run-state" => PathBuf::from(env!("CARGO_BIN_EXE_run-state")),
        "sync-cloud" => PathBuf::from(env!("CARGO_BIN_EXE_sync-cloud")),
        "monitor" => PathBuf::from(env!("CARGO_BIN_EXE_monitor")),
        "concourse-resource" => PathBuf::from(env!("CARGO_BIN_EXE_concourse-resource")),
        other => panic!("unknown binary {other}"),
    }
}

/// Every variable of ours, Concourse's build metadata, and where the default database
/// would live: none of the developer's settings may leak into a test.
fn clear_env(c: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BUILDSTATE_") {
            c.env_remove(key);
        }
    }
    for v in buildstate::context::CONCOURSE_VARS {
        c.env_remove(v);
    }
    c.env_remove("XDG_STATE_HOME");
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("state.db");
        Env { dir, db }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command for `name` with a clean environment and `--db` set.
    pub fn command(&self, name: &str) -> Command {
        self.command_on(name, &self.db)
    }

    /// [`Env::command`] on another database: another machine's.
    pub fn command_on(&self, name: &str, db: &Path) -> Command {
        let mut c = Command::new(bin(name));
        clear_env(&mut c);
        c.env("HOME", self.dir.path()).current_dir(self.dir.path());
        c.arg("--db").arg(db);
        c
    }

    pub fn run(&self, name: &str, args: &[&str]) -> Run {
        self.run_with(self.command(name).args(args), None)
    }

    pub fn run_stdin(&self, name: &str, args: &[&str], stdin: &[u8]) -> Run {
        self.run_with(self.command(name).args(args), Some(stdin))
    }

    pub fn run_with(&self, cmd: &mut Command, stdin: Option<&[u8]>) -> Run {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out: Output = child.wait_with_output().expect("wait");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    }

    /// init-state of `id` with the plan file `plan`.
    pub fn init_with_plan(&self, id: &str, plan: &Path) -> Run {
        let plan = plan.to_str().unwrap();
        self.run(
            "init-state",
            &[id, "--cloud", "aws", "--image", "rhel9", "--plan", plan],
        )
    }

    pub fn init(&self, id: &str) {
        self.run("init-state", &[id, "--cloud", "aws", "--image", "rhel9"])
            .ok();
    }

    /// update-state on `id` with `args` (exit code not checked).
    pub fn update(&self, id: &str, args: &[&str]) -> Run {
        let mut full = vec![id];
        full.extend_from_slice(args);
        self.run("update-state", &full)
    }

    /// check-state --json --history (exit code not checked).
    pub fn state(&self, id: &str) -> Value {
        self.run("check-state", &[id, "--json", "--history"]).json()
    }

    pub fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, body).unwrap();
        p
    }
}

pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
        Err(_) => false,
    }
}

/// Run `sql` on the database at `db` and assert that the history's append-only trigger
/// refuses it.
#[track_caller]
pub fn assert_append_only(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let err = conn.execute(sql, []).unwrap_err();
    assert!(err.to_string().contains("append-only"), "{sql}: {err}");
}

/// Poll `done` every 50 ms until it holds; fail after 30 s, naming `what`. Tests wait
/// for a state this way instead of sleeping a guessed time.
#[track_caller]
pub fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The events of `kind` in a `check-state --json --history` report, oldest first.
pub fn events<'a>(j: &'a Value, kind: &str) -> Vec<&'a Value> {
    j["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Field `field` of each element of the JSON array `array`, as strings, in order.
pub fn strs<'a>(array: &'a Value, field: &str) -> Vec<&'a str> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap())
        .collect()
}

/// A test that injects a failure through a test hook (`BUILDSTATE_TEST_…`) needs the
/// binaries built with them: fail loudly, rather than pass without the failure.
pub fn need_fail_points() {
    if !cfg!(feature = "fail-points") {
        panic!("this test injects a failure: run it with `cargo test --features fail-points` (as scripts/test does)");
    }
}
