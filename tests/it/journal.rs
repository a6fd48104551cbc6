//! Issue 25: a state that finished stays finished when the remote is briefly away. A
//! file:// remote is held away by holding its folder's lock (as a stuck writer would),
//! with BUILDSTATE_REMOTE_TIMEOUT=1s, while run-state's command finishes: an outage
//! shorter than the lease, longer than it, a kill -9 of the worker during it, and a
//! takeover during it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{events, Env};
use buildstate::exit;

const PLAN: &str = "name = \"j\"\n[[state]]\nid = 5\nname = \"bake\"\nexpected = \"1s\"\n";

struct Fleet {
    env: Env,
    remote: String,
    lock: PathBuf,
}

fn fleet() -> Fleet {
    let env = Env::new();
    let remote = format!("file://{}", env.path("remote").display());
    let plan = env.write("plan.toml", PLAN);
    let f = Fleet {
        lock: env.path("remote").join(".buildstate.lock"),
        env,
        remote,
    };
    f.run(
        &f.env.db,
        "init-state",
        &[
            "b",
            "--cloud",
            "aws",
            "--image",
            "x",
            "--plan",
            plan.to_str().unwrap(),
        ],
    )
    .code(exit::OK);
    assert!(
        f.lock.exists(),
        "the folder remote keeps its lock at {}",
        f.lock.display()
    );
    f
}

impl Fleet {
    fn command(&self, db: &Path, tool: &str) -> Command {
        let mut c = self.env.command_on(tool, db);
        c.env("BUILDSTATE_REMOTE", &self.remote)
            .env("BUILDSTATE_REMOTE_TIMEOUT", "1s");
        c
    }

    fn run(&self, db: &Path, tool: &str, args: &[&str]) -> crate::util::Run {
        self.env.run_with(self.command(db, tool).args(args), None)
    }

    /// Hold the remote away: its lock, taken `after` from now, for `hold`.
    fn outage(&self, after: Duration, hold: Duration) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep {}; exec flock '{}' sleep {}",
                after.as_secs_f64(),
                self.lock.display(),
                hold.as_secs_f64()
            ))
            .spawn()
            .unwrap()
    }

    /// The build as another machine (a fresh database) sees it on the remote.
    fn seen_elsewhere(&self) -> serde_json::Value {
        let other = self.env.path("elsewhere.db");
        let _ = std::fs::remove_file(&other);
        self.run(&other, "check-state", &["b", "--json", "--history"])
            .json()
    }
}

fn millis(at: &serde_json::Value) -> u128 {
    humantime::parse_rfc3339(at.as_str().unwrap())
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The one complete event, recorded when the 2-second command ended.
fn assert_completed_once_in_time(j: &serde_json::Value) {
    assert_eq!(j["status"], "completed", "{j}");
    let (start, done) = (events(j, "start"), events(j, "complete"));
    assert_eq!((start.len(), done.len()), (1, 1), "{}", j["history"]);
    let took = millis(&done[0]["at"]) - millis(&start[0]["at"]);
    assert!(
        (2000..2900).contains(&took),
        "recorded {took} ms after the start for a 2 s command"
    );
}

#[test]
fn an_outage_shorter_than_the_lease_lands_before_the_worker_exits() {
    let f = fleet();
    let mut away = f.outage(Duration::from_millis(800), Duration::from_secs(4));
    let r = f.run(
        &f.env.db,
        "run-state",
        &["b", "5", "--lease-ttl", "30s", "--", "sleep", "2"],
    );
    away.wait().unwrap();
    assert_eq!(r.code, exit::OK, "{}", r.stderr);
    assert!(
        r.stderr.contains("is kept on this machine and tried again"),
        "{}",
        r.stderr
    );
    assert_completed_once_in_time(&f.seen_elsewhere());
}

#[test]
fn an_outage_longer_than_the_lease_is_journaled_and_lands_with_the_next_command() {
    let f = fleet();
    let mut away = f.outage(Duration::from_millis(800), Duration::from_secs(6));
    let r = f.run(
        &f.env.db,
        "run-state",
        &["b", "5", "--lease-ttl", "3s", "--", "sleep", "2"],
    );
    assert_eq!(r.code, exit::JOURNALED, "{}", r.stderr);
    assert!(
        r.stderr.contains("journaled on this machine"),
        "{}",
        r.stderr
    );
    // While it is away, this machine says the outcome waits; the remote has no outcome.
    let here = f.run(&f.env.db, "check-state", &["b", "--json"]).json();
    assert_eq!(
        here["journaled"][0]["outcome"], "completed state 5",
        "{here}"
    );
    let status = f.run(&f.env.db, "monitor", &["status"]).stdout;
    assert!(
        status.contains("journaled here, not yet shared"),
        "{status}"
    );
    away.wait().unwrap();
    // The remote is back: the next command here lands it, once.
    let r = f.run(&f.env.db, "check-state", &["b"]);
    assert!(r.stderr.contains("landed on remote"), "{}", r.stderr);
    assert_completed_once_in_time(&f.seen_elsewhere());
    let again = f.run(&f.env.db, "check-state", &["b", "--json"]);
    assert!(
        !again.stderr.contains("landed"),
        "landed twice: {}",
        again.stderr
    );
    assert!(again.json().get("journaled").is_none());
    assert_completed_once_in_time(&f.seen_elsewhere());
}

#[test]
fn a_worker_killed_during_the_outage_keeps_its_journal_for_the_next_command() {
    let f = fleet();
    let mut away = f.outage(Duration::from_millis(800), Duration::from_secs(8));
    let mut worker = f.command(&f.env.db, "run-state");
    worker
        .args(["b", "5", "--lease-ttl", "30s", "--", "sleep", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut worker = worker.spawn().unwrap();
    // Once the outcome is journaled (the command ended and the remote refused it).
    let db = f.env.db.clone();
    crate::util::poll_until("the outcome to be journaled", || {
        rusqlite::Connection::open(&db).ok().and_then(|c| {
            c.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get::<_, i64>(0))
                .ok()
        }) == Some(1)
    });
    worker.kill().unwrap(); // SIGKILL, during the outage
    worker.wait().unwrap();
    away.wait().unwrap();
    let r = f.run(&f.env.db, "sync-cloud", &["push", "b"]);
    assert!(r.stderr.contains("landed on remote"), "{}", r.stderr);
    assert_completed_once_in_time(&f.seen_elsewhere());
}

#[test]
fn a_takeover_during_the_outage_makes_the_journaled_outcome_a_late_result() {
    let f = fleet();
    let mut away = f.outage(Duration::from_millis(800), Duration::from_secs(5));
    let r = f.run(
        &f.env.db,
        "run-state",
        &["b", "5", "--lease-ttl", "3s", "--", "sleep", "2"],
    );
    assert_eq!(r.code, exit::JOURNALED, "{}", r.stderr);
    away.wait().unwrap();
    // Another machine finds the lease expired and runs the state again, first.
    let other = f.env.path("worker-b.db");
    let b = f.run(&other, "run-state", &["b", "5", "--", "true"]);
    assert_eq!(b.code, exit::OK, "{}", b.stderr);
    // The first worker's outcome lands as what it is: a late result, not a second truth.
    let r = f.run(&f.env.db, "check-state", &["b"]);
    assert!(r.stderr.contains("late result"), "{}", r.stderr);
    let j = f.seen_elsewhere();
    assert_eq!(events(&j, "complete").len(), 1, "{}", j["history"]);
    let late = events(&j, "late");
    assert_eq!(late.len(), 1, "{}", j["history"]);
    assert_eq!(late[0]["attempt"], 1);
    assert!(
        late[0]["message"]
            .as_str()
            .unwrap()
            .contains("completed state 5"),
        "{}",
        late[0]
    );
    assert_eq!(events(&j, "complete")[0]["attempt"], 2, "{}", j["history"]);
}
