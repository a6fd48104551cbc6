//! `monitor stats` (issue 17) over a database built by real transitions with known
//! times: every expected figure is computed here from the times the test chose, and the
//! binary's --json must give the same figures as the library.

use std::time::{Duration, SystemTime};

use buildstate::context::Actor;
use buildstate::model::{Ctx, InitRequest, Transition};
use buildstate::plan::Plan;
use buildstate::policy::Category;
use buildstate::stats::{stats, Filter};
use buildstate::store::Store;

const PLAN: &str = r#"
name = "three"
[defaults]
retry = { policy = "immediate", max_attempts = 3, delay = "1m" }
[[state]]
id = 0
name = "init"
expected = "1m"
[[state]]
id = 5
name = "kickstart"
expected = "10m"
[[state]]
id = 10
name = "ansible"
expected = "20m"
"#;

const MIN: u64 = 60;

struct Fleet {
    store: Store,
    actor: Actor,
    t0: SystemTime,
}

impl Fleet {
    fn at(&self, minutes: u64) -> SystemTime {
        self.t0 + Duration::from_secs(minutes * MIN)
    }

    fn init(&mut self, id: &str, image: &str) {
        let req = InitRequest {
            build_id: id.into(),
            cloud: "aws".into(),
            image: image.into(),
            plan: Plan::from_toml(PLAN, "test").unwrap(),
            meta: vec![],
            after: vec![],
        };
        let now = self.t0;
        self.store.init(&req, &self.actor, now).unwrap();
    }

    fn go(&mut self, id: &str, minutes: u64, t: Transition) {
        let ctx = Ctx::at(self.at(minutes));
        self.store
            .transition(id, &t, &self.actor, &ctx)
            .unwrap_or_else(|e| panic!("{id} at +{minutes}m {t:?}: {e}"));
    }
}

fn start(state: u8) -> Transition {
    Transition::Start { state }
}

fn complete(state: u8) -> Transition {
    Transition::Complete {
        state,
        inputs: None,
    }
}

fn fail(state: u8, message: &str, category: Category) -> Transition {
    Transition::Fail {
        state,
        message: message.into(),
        category: Some(category),
        exit_code: Some(1),
        signal: None,
        timed_out: false,
    }
}

#[test]
fn stats_over_known_transitions() {
    let env = crate::util::Env::new();
    let db = env.db.clone();
    let now = SystemTime::now();
    let mut f = Fleet {
        store: Store::open(&db).unwrap(),
        actor: buildstate::environment::actor("test"),
        t0: now - Duration::from_secs(86_400),
    };
    // a: two clean states, then done: 5 took 10m, 10 took 20m.
    f.init("a", "rhel9");
    f.go("a", 0, start(5));
    f.go("a", 10, complete(5));
    f.go("a", 10, start(10));
    f.go("a", 30, complete(10));
    // b: 5 fails after 5m (a retry is scheduled), the retry starts at +20m (15m waiting
    // for it) and takes 30m.
    f.init("b", "rhel9");
    f.go("b", 0, start(5));
    f.go(
        "b",
        5,
        fail(5, "mirror timed out after 30001 ms", Category::Transient),
    );
    f.go("b", 20, start(5));
    f.go("b", 50, complete(5));
    // c: 5 fails persistently after 1m (blocked), a person allows a retry an hour later,
    // which starts a minute after that and takes 10m. Another image.
    f.init("c", "ubuntu");
    f.go("c", 0, start(5));
    f.go(
        "c",
        1,
        fail(5, "permission denied (publickey)", Category::Persistent),
    );
    f.go(
        "c",
        61,
        Transition::Retry {
            state: 5,
            reason: "key fixed".into(),
        },
    );
    f.go("c", 62, start(5));
    f.go("c", 72, complete(5));

    let s = stats(&f.store, f.t0, &Filter::default(), now).unwrap();
    assert_eq!(s.builds, 3);
    let five = s.states.iter().find(|s| s.state == 5).unwrap();
    assert_eq!(five.name, "kickstart");
    assert_eq!((five.runs, five.successes, five.failures), (5, 3, 2));
    assert_eq!(five.success_rate, Some(3.0 / 5.0));
    assert_eq!(five.attempts_per_success, Some(5.0 / 3.0));
    // successful attempts: 10m, 30m, 10m; nearest rank: p50 is the 2nd of 3, p95 the 3rd
    assert_eq!(five.p50_seconds, Some((10 * MIN) as f64));
    assert_eq!(five.p95_seconds, Some((30 * MIN) as f64));
    assert_eq!(five.expected_seconds, Some((10 * MIN) as f64));
    assert_eq!(five.retry_wait_seconds, (15 * MIN) as f64);
    assert_eq!(five.person_wait_seconds, (60 * MIN) as f64);
    assert_eq!(
        five.top_categories,
        vec![("persistent".to_string(), 1), ("transient".to_string(), 1)]
    );
    assert!(five
        .top_errors
        .contains(&("mirror timed out after N ms".to_string(), 1)));
    let ten = s.states.iter().find(|s| s.state == 10).unwrap();
    assert_eq!((ten.runs, ten.successes, ten.failures), (1, 1, 0));
    assert_eq!(ten.p50_seconds, Some((20 * MIN) as f64));
    assert_eq!(ten.expected_seconds, Some((20 * MIN) as f64));
    // per build, most time lost first: c lost its 1m attempt and the hour waiting for a
    // person; b its 5m attempt and the 15m retry wait; a nothing. a is completed: its
    // total is its first event to its last.
    let lost: Vec<(&str, f64)> = s
        .per_build
        .iter()
        .map(|b| (b.build_id.as_str(), b.lost_to_retries_seconds))
        .collect();
    assert_eq!(
        lost,
        vec![
            ("c", (61 * MIN) as f64),
            ("b", (20 * MIN) as f64),
            ("a", 0.0)
        ]
    );
    let a = s.per_build.iter().find(|b| b.build_id == "a").unwrap();
    assert_eq!(a.total_seconds, (30 * MIN) as f64);

    // Filters: one image; a window that starts after everything.
    let ubuntu = Filter {
        image: Some("ubuntu".into()),
        ..Filter::default()
    };
    let only_c = stats(&f.store, f.t0, &ubuntu, now).unwrap();
    assert_eq!(only_c.builds, 1);
    assert_eq!(only_c.states.iter().find(|s| s.state == 5).unwrap().runs, 2);
    let none = stats(&f.store, f.at(100), &Filter::default(), now).unwrap();
    assert_eq!((none.builds, none.states.len()), (0, 0));
    let plan_filter = Filter {
        plan: Some("no-such-plan".into()),
        ..Filter::default()
    };
    assert_eq!(stats(&f.store, f.t0, &plan_filter, now).unwrap().builds, 0);

    // The command gives the library's figures (--json), and a table for people.
    drop(f);
    let v = env
        .run("monitor", &["stats", "--since", "2days", "--json"])
        .ok()
        .json();
    assert_eq!(v["builds"], 3);
    assert_eq!(v["states"][0]["state"], 5);
    assert_eq!(v["states"][0]["retry_wait_seconds"], 900.0);
    assert_eq!(v["states"][0]["person_wait_seconds"], 3600.0);
    let text = env
        .run(
            "monitor",
            &["stats", "--since", "2days", "--image", "rhel9"],
        )
        .ok()
        .stdout;
    assert!(text.contains("2 build(s)"), "{text}");
    assert!(text.contains("kickstart"), "{text}");
    assert!(text.contains("mirror timed out after N ms"), "{text}");
    assert!(!text.contains("permission denied"), "{text}");
    // The same figures as Prometheus gauges.
    let metrics = env
        .run("monitor", &["metrics", "--since", "2days"])
        .ok()
        .stdout;
    for line in [
        "buildstate_stats_window_seconds 172800",
        "buildstate_state_runs{plan=\"three\",state=\"5\",name=\"kickstart\"} 5",
        "buildstate_state_retry_wait_seconds{plan=\"three\",state=\"5\",name=\"kickstart\"} 900",
        "buildstate_state_person_wait_seconds{plan=\"three\",state=\"5\",name=\"kickstart\"} 3600",
        "buildstate_state_duration_p95_seconds{plan=\"three\",state=\"5\",name=\"kickstart\"} 1800",
        "buildstate_state_failures_by_category{plan=\"three\",state=\"5\",name=\"kickstart\",category=\"persistent\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
}

#[test]
fn report_and_metrics_refuse_to_replace_what_is_not_a_file() {
    // Written as a temporary file renamed over the path: over a device (/dev/null as
    // root), a pipe or a directory that would replace it. Checked here on a pipe.
    let env = crate::util::Env::new();
    env.init("b1");
    let fifo = env.path("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let fifo_s = fifo.to_str().unwrap();
    for args in [
        vec!["monitor", "report", "--html", fifo_s],
        vec!["monitor", "metrics", "--textfile", fifo_s],
        vec!["check-state", "b1", "--html", fifo_s],
    ] {
        let r = env
            .run(args[0], &args[1..])
            .code(buildstate::exit::INVALID_INPUT);
        assert!(
            r.stderr.contains("not a regular file"),
            "{args:?}: {}",
            r.stderr
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }
    // A regular file is replaced whole.
    let page = env.path("page.html");
    std::fs::write(&page, "old").unwrap();
    env.run("monitor", &["report", "--html", page.to_str().unwrap()])
        .ok();
    assert!(std::fs::read_to_string(&page)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
}
