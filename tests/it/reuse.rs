//! Issue 29, reuse: `init-state B2 --reuse-from B1` records as `reused` the leading
//! states of B1 whose inputs are what B2's hash to now, with their outputs; the first
//! that differs runs normally; reused resources stay B1's.

use serde_json::Value;

use crate::util::Env;

/// A nightly golden image: kickstart and configuration states with file inputs, then
/// integration tests that count the night (a metadata input).
const NIGHTLY: &str = r#"
name = "golden-nightly"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 5
name = "kickstart"
expected = "1m"
inputs = { files = ["kickstart.cfg"] }
[[state]]
id = 10
name = "packages"
expected = "1m"
inputs = { files = ["packages.txt"] }
[[state]]
id = 15
name = "users"
expected = "1m"
inputs = { files = ["roles/users/**"] }
[[state]]
id = 20
name = "hardening"
expected = "1m"
inputs = { files = ["roles/cis/**"] }
[[state]]
id = 25
name = "image"
expected = "1m"
inputs = { values = ["rhel9"] }
[[state]]
id = 30
name = "integration-tests"
expected = "1m"
inputs = { meta = ["night"] }
"#;

struct Nightly {
    env: Env,
    plan: String,
    root: String,
}

impl Nightly {
    fn new() -> Nightly {
        let env = Env::new();
        let plan = env.write("nightly.toml", NIGHTLY).display().to_string();
        for d in ["src/roles/users/tasks", "src/roles/cis/tasks"] {
            std::fs::create_dir_all(env.path(d)).unwrap();
        }
        env.write("src/kickstart.cfg", "lang en_US\n");
        env.write("src/packages.txt", "vim\n");
        env.write("src/roles/users/tasks/main.yml", "- users\n");
        env.write("src/roles/cis/tasks/main.yml", "- cis\n");
        let root = env.path("src").display().to_string();
        Nightly { env, plan, root }
    }

    fn init(&self, id: &str, night: &str, extra: &[&str]) -> crate::util::Run {
        let night = format!("night={night}");
        let mut args = vec![
            id, "--cloud", "aws", "--image", "rhel9", "--plan", &self.plan, "--meta", &night,
        ];
        args.extend_from_slice(extra);
        self.env.run("init-state", &args)
    }

    fn run_through(&self, id: &str) {
        for s in ["5", "10", "15", "20", "25", "30"] {
            self.env
                .update(id, &["start", s, "--inputs-root", &self.root])
                .ok();
            if s == "5" {
                self.env
                    .update(
                        id,
                        &[
                            "resource",
                            "add",
                            "key-pair",
                            &format!("kp-{id}"),
                            "--cleanup",
                            "true",
                        ],
                    )
                    .ok();
            }
            if s == "25" {
                self.env
                    .update(id, &["output", &format!("ami_id=ami-{id}")])
                    .ok();
            }
            self.env
                .update(id, &["complete", s, "--inputs-root", &self.root])
                .ok();
        }
    }

    fn check(&self, id: &str, extra: &[&str]) -> (i32, Value) {
        let mut args = vec![id, "--json", "--inputs-root", &self.root];
        args.extend_from_slice(extra);
        let r = self.env.run("check-state", &args);
        (r.code, r.json())
    }
}

#[test]
fn an_identical_nightly_reuses_its_leading_states_and_runs_from_the_first_that_differs() {
    let n = Nightly::new();
    n.init("nightly-1", "2026-12-01", &[]).ok();
    n.run_through("nightly-1");
    // Tonight: same files, another night. States 5 to 25 are reused, 30 runs.
    let r = n
        .init(
            "nightly-2",
            "2026-12-02",
            &[
                "--reuse-from",
                "nightly-1",
                "--inputs-root",
                &n.root,
                "--json",
            ],
        )
        .ok();
    let j = r.json();
    let reused: Vec<u64> = j["reuse"]["reused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_u64().unwrap())
        .collect();
    assert_eq!(reused, [5, 10, 15, 20, 25], "{j}");
    assert_eq!(j["reuse"]["reused"][0]["attempt"], 1, "{j}");
    let stopped = j["reuse"]["stopped"].as_str().unwrap();
    assert!(
        stopped.contains("state 30") && stopped.contains("metadata night changed"),
        "{stopped}"
    );
    let (code, j) = n.check("nightly-2", &[]);
    assert_eq!(
        (code, j["decision"].as_str(), j["next_state"].as_u64()),
        (0, Some("resume"), Some(30)),
        "{j}"
    );
    assert_eq!(j["stale"], serde_json::json!([]), "{j}");
    // Its outputs came along, recorded by the reused state.
    assert_eq!(j["outputs"]["ami_id"]["value"], "ami-nightly-1", "{j}");
    assert_eq!(j["outputs"]["ami_id"]["state"], 25, "{j}");
    // The plan view says where each came from.
    let (_, view) = n.check("nightly-2", &["--plan"]);
    let rows = view["states"].as_array().unwrap();
    let row = |id: u64| rows.iter().find(|r| r["state"] == id).unwrap();
    assert_eq!(row(5)["status"], "reused", "{view}");
    let why = row(5)["why"].as_str().unwrap();
    assert!(
        why.starts_with("reused from nightly-1: attempt 1 completed at"),
        "{why}"
    );
    assert_eq!(row(30)["status"], "pending", "{view}");
    let text = n.env.run(
        "check-state",
        &["nightly-2", "--plan", "--inputs-root", &n.root],
    );
    assert!(
        text.stdout.contains("reused from nightly-1"),
        "{}",
        text.stdout
    );
    // A reused state goes stale like a completed one when its inputs change later.
    n.env
        .write("src/roles/cis/tasks/main.yml", "- cis, edited\n");
    let (_, j) = n.check("nightly-2", &[]);
    assert_eq!(
        (j["decision"].as_str(), j["next_state"].as_u64()),
        (Some("rerun"), Some(20)),
        "{j}"
    );
    n.env.write("src/roles/cis/tasks/main.yml", "- cis\n");
    // The reused resources stay nightly-1's: cancelling nightly-2 with its cleanup
    // touches none of them.
    n.env
        .update(
            "nightly-2",
            &["cancel", "--reason", "done testing", "--cleanup"],
        )
        .ok();
    let (_, res) = n.check("nightly-1", &["--resources"]);
    let list = res["resources"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{res}");
    assert_eq!(list[0]["id"], "kp-nightly-1");
    assert_eq!(list[0]["status"], "present", "{res}");
    let (_, res2) = n.check("nightly-2", &["--resources"]);
    assert_eq!(res2["resources"], serde_json::json!([]), "{res2}");
    // A changed kickstart reuses nothing: state 5 runs first.
    n.env.write("src/kickstart.cfg", "lang fr_FR\n");
    let r = n
        .init(
            "nightly-3",
            "2026-12-01",
            &["--reuse-from", "nightly-1", "--inputs-root", &n.root],
        )
        .ok();
    assert!(
        r.stdout.contains("reused from nightly-1: nothing"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("kickstart.cfg changed"), "{}", r.stdout);
    let (_, j) = n.check("nightly-3", &[]);
    assert_eq!(
        (j["decision"].as_str(), j["next_state"].as_u64()),
        (Some("resume"), Some(5)),
        "{j}"
    );
}

#[test]
fn careless_reuse_is_refused_before_anything_is_written() {
    let n = Nightly::new();
    n.init("nightly-1", "2026-12-01", &[]).ok();
    for (id, from, what) in [
        (
            "nightly-9",
            "nightly-l",
            "no build 'nightly-l' (similar: nightly-1)",
        ),
        ("nightly-1x", "nightly-1x", "cannot reuse its own states"),
        ("nightly-8", "../etc", "not a build id"),
    ] {
        let r = n.init(id, "2026-12-02", &["--reuse-from", from]);
        assert_eq!(r.code, buildstate::exit::INVALID_INPUT, "{}", r.stderr);
        assert!(r.stderr.contains(what), "{what}: {}", r.stderr);
        let gone = n.env.run("check-state", &[id, "--json"]);
        assert_eq!(gone.json()["exists"], false, "{id} was written");
    }
    // --inputs-root means nothing without --reuse-from: a usage error.
    let r = n.init("nightly-7", "2026-12-02", &["--inputs-root", &n.root]);
    assert_eq!(r.code, buildstate::exit::USAGE, "{}", r.stderr);
    // A build that ran nothing yet gives nothing to reuse, and says so.
    let r = n
        .init("nightly-6", "2026-12-02", &["--reuse-from", "nightly-1"])
        .ok();
    assert!(
        r.stdout.contains("nightly-1 has not completed state 5"),
        "{}",
        r.stdout
    );
}

#[test]
fn the_inputs_root_variable_does_not_get_in_the_way_of_a_plain_init() {
    let n = Nightly::new();
    let mut c = n.env.command("init-state");
    c.args(["plain-1", "--cloud", "aws", "--image", "rhel9"])
        .env("BUILDSTATE_INPUTS_ROOT", &n.root);
    n.env.run_with(&mut c, None).ok();
}

/// A failure after the build is written (here the reuse's own write: an injected full
/// disk) is not reported as a failed init: the build stands, nothing is marked reused,
/// and the outcome and a warning say what went wrong. A bad inputs root is refused
/// before anything is written.
#[test]
fn a_reuse_that_fails_after_the_build_is_written_says_so_and_reuses_nothing() {
    let n = Nightly::new();
    n.init("nightly-1", "2026-12-01", &[]).ok();
    n.run_through("nightly-1");
    let file = n.env.path("src/kickstart.cfg").display().to_string();
    let r = n.init(
        "nightly-4",
        "2026-12-02",
        &["--reuse-from", "nightly-1", "--inputs-root", &file],
    );
    assert_eq!(r.code, buildstate::exit::INVALID_INPUT, "{}", r.stderr);
    assert_eq!(
        n.check("nightly-4", &[]).1["exists"],
        false,
        "written before the root was checked"
    );
    let mut c = n.env.command("init-state");
    c.args([
        "nightly-5",
        "--cloud",
        "aws",
        "--image",
        "rhel9",
        "--plan",
        &n.plan,
        "--meta",
        "night=2",
        "--reuse-from",
        "nightly-1",
        "--inputs-root",
        &n.root,
        "--json",
    ])
    .env("BUILDSTATE_TEST_FAIL_COMMIT", "1");
    let r = n.env.run_with(&mut c, None).ok();
    let j = r.json();
    assert_eq!(j["created"], true, "{j}");
    assert_eq!(j["reuse"]["reused"], serde_json::json!([]), "{j}");
    assert!(
        j["reuse"]["error"].as_str().unwrap().contains("injected"),
        "{j}"
    );
    assert!(
        j["reuse"]["stopped"]
            .as_str()
            .unwrap()
            .starts_with("state 5 (kickstart) could not be recorded as reused"),
        "{j}"
    );
    assert!(
        r.stderr
            .contains("warning: build nightly-5 was created, but reusing from nightly-1 failed"),
        "{}",
        r.stderr
    );
    let (_, j) = n.check("nightly-5", &[]);
    assert_eq!(
        (j["decision"].as_str(), j["next_state"].as_u64()),
        (Some("resume"), Some(5)),
        "{j}"
    );
}
