use std::time::{Duration, SystemTime};

use crate::plan::Plan;
use crate::policy::Category;
use crate::Error;

use super::attempts::*;
use super::transition::*;
use super::*;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn fresh() -> (Build, Plan) {
    let plan = Plan::default_plan_with_work_at_0();
    let req = InitRequest {
        plan: plan.clone(),
        ..InitRequest::sample("b1")
    };
    (req.new_build("lin".into(), t0()).0, plan)
}

fn at(b: &Build, plan: &Plan, t: Transition, now: SystemTime) -> Build {
    apply(b, plan, &t, &Ctx::at(now))
        .unwrap_or_else(|e| panic!("{t:?}: {e}"))
        .build
}

fn step(b: &Build, plan: &Plan, t: Transition) -> Build {
    at(b, plan, t, t0() + Duration::from_secs(b.serial * 10))
}

fn refused_at(b: &Build, plan: &Plan, t: Transition, now: SystemTime) -> String {
    match apply(b, plan, &t, &Ctx::at(now)) {
        Err(Error::Refused(m)) => m.to_string(),
        other => panic!("{t:?} should be refused, got {other:?}"),
    }
}

fn refused(b: &Build, plan: &Plan, t: Transition) -> String {
    refused_at(b, plan, t, t0())
}

#[test]
fn force_reset_and_prerequisites_move_the_build_as_documented() {
    let (mut b, plan) = fresh();
    for id in [0, 5, 10] {
        b = step(&b, &plan, Transition::complete(id));
    }
    let reopen = |from, why| Transition::Reopen {
        from,
        reason: "why".into(),
        why,
    };
    // Force 5: 0 stays done, 5 is next; nothing about an attempt is left.
    let forced = step(&b, &plan, reopen(Some(5), Reopen::Force));
    assert_eq!(
        (forced.current_state, forced.status),
        (Some(0), Status::Pending)
    );
    // Force the first state (which has work here) or --all: nothing stays done.
    assert_eq!(
        step(&b, &plan, reopen(Some(0), Reopen::Force)).current_state,
        None
    );
    assert_eq!(
        step(&b, &plan, reopen(None, Reopen::Reset)).current_state,
        None
    );
    // A state not run yet cannot be forced; a running build cannot be reset.
    assert!(refused(&b, &plan, reopen(Some(20), Reopen::Force)).contains("has not run yet"));
    let running = step(&b, &plan, Transition::Start { state: 15 });
    assert!(refused(&running, &plan, reopen(None, Reopen::Reset)).contains("running"));
    // A reason is required.
    let no_reason = Transition::Reopen {
        from: None,
        reason: " ".into(),
        why: Reopen::Reset,
    };
    assert!(matches!(
        apply(&b, &plan, &no_reason, &Ctx::at(t0())),
        Err(Error::NeedsReason(_))
    ));
    // A failed prerequisite: blocked, no attempt used; a retry then allows attempt 1.
    let unmet = Transition::Unmet {
        state: 15,
        message: "no token".into(),
    };
    let blocked = step(&b, &plan, unmet.clone());
    assert_eq!(
        (
            blocked.status,
            blocked.active_state,
            blocked.attempt,
            blocked.last_category
        ),
        (Status::Blocked, Some(15), 0, Some(Category::Prerequisite))
    );
    // Only where a start would be accepted.
    assert!(refused(
        &b,
        &plan,
        Transition::Unmet {
            state: 20,
            message: "x".into()
        }
    )
    .contains("the next state is state 15"));
    let retried = step(
        &blocked,
        &plan,
        Transition::Retry {
            state: 15,
            reason: "token added".into(),
        },
    );
    let started = step(&retried, &plan, Transition::Start { state: 15 });
    assert_eq!((started.status, started.attempt), (Status::Running, 1));
    // Forcing the failed state clears it: a fresh first attempt.
    let cleared = step(&blocked, &plan, reopen(Some(15), Reopen::Force));
    assert_eq!(
        (cleared.status, cleared.active_state, cleared.current_state),
        (Status::Pending, None, Some(10))
    );
}

#[test]
fn walk_through_the_whole_plan() {
    let (mut b, plan) = fresh();
    for s in plan.states.clone() {
        b = step(&b, &plan, Transition::Start { state: s.id });
        assert_eq!(
            (b.status, b.active_state, b.attempt),
            (Status::Running, Some(s.id), 1)
        );
        b = step(&b, &plan, Transition::complete(s.id));
        assert_eq!(b.current_state, Some(s.id));
        assert_eq!(b.active_state, None);
    }
    assert_eq!(b.status, Status::Completed);
    assert_eq!(b.serial, 1 + 2 * plan.states.len() as u64);
}

#[test]
fn failure_keeps_current_state_and_schedules_a_retry() {
    let (mut b, plan) = fresh();
    b = step(&b, &plan, Transition::complete(0));
    b = at(&b, &plan, Transition::Start { state: 5 }, t0());
    let fail = Transition::Fail {
        state: 5,
        message: "mirror didn't answer password=x".into(),
        category: Some(Category::Transient),
        exit_code: Some(7),
        signal: None,
        timed_out: false,
    };
    let later = t0() + Duration::from_secs(90);
    let change = apply(
        &b,
        &plan,
        &fail,
        &Ctx {
            jitter: 0.0,
            ..Ctx::at(later)
        },
    )
    .unwrap();
    let e = &change.events[0];
    assert_eq!(
        (e.attempt, e.exit_code, e.category),
        (Some(1), Some(7), Some(Category::Transient))
    );
    assert_eq!(e.duration_ms, Some(90_000));
    assert_eq!(
        e.message.as_deref(),
        Some("mirror didn't answer password=[REDACTED]")
    );
    b = change.build;
    assert_eq!(
        (b.status, b.current_state, b.active_state),
        (Status::Waiting, Some(0), Some(5))
    );
    // kickstart: backoff from 5 minutes, jitter draw 0 gives half of it.
    assert_eq!(b.next_attempt_at, Some(later + Duration::from_secs(150)));
    assert_eq!(b.first_attempt_at, Some(t0()));
    // Not due yet: start is refused with the time; due: allowed as attempt 2.
    let m = refused_at(
        &b,
        &plan,
        Transition::Start { state: 5 },
        later + Duration::from_secs(60),
    );
    assert!(
        m.contains("not due until") && m.contains("attempt 2 of 4"),
        "{m}"
    );
    b = at(
        &b,
        &plan,
        Transition::Start { state: 5 },
        later + Duration::from_secs(150),
    );
    assert_eq!(
        (b.attempt, b.status, b.first_attempt_at),
        (2, Status::Running, Some(t0()))
    );
    b = step(&b, &plan, Transition::complete(5));
    assert_eq!(
        (
            b.current_state,
            b.last_error.clone(),
            b.attempt,
            b.next_attempt_at
        ),
        (Some(5), None, 0, None)
    );
}

#[test]
fn exhausted_and_persistent_failures_block_until_a_person_retries() {
    let (mut b, plan) = fresh();
    b = step(&b, &plan, Transition::complete(0));
    b = step(&b, &plan, Transition::complete(5));
    // green-image validation: 5 attempts 1 minute apart.
    let mut now = t0() + Duration::from_secs(3600);
    for n in 1..=5 {
        b = at(
            &b,
            &plan,
            Transition::fail(10, "ssh: connect to host: Connection refused"),
            now,
        );
        assert_eq!(b.attempt, n);
        assert_eq!(b.last_category, Some(Category::Transient));
        now += Duration::from_secs(60);
    }
    assert_eq!(b.status, Status::Blocked);
    assert_eq!(b.blocked_reason.as_deref(), Some("all 5 attempts failed"));
    let m = refused_at(&b, &plan, Transition::Start { state: 10 }, now);
    assert!(
        m.contains("is blocked: all 5 attempts failed") && m.contains("retry 10 --reason"),
        "{m}"
    );
    // A person allows exactly one more attempt.
    b = at(
        &b,
        &plan,
        Transition::Retry {
            state: 10,
            reason: "opened the security group".into(),
        },
        now,
    );
    assert_eq!(
        (b.status, b.next_attempt_at, b.extra_attempts),
        (Status::Waiting, Some(now), 1)
    );
    b = at(&b, &plan, Transition::Start { state: 10 }, now);
    assert_eq!(b.attempt, 6);
    b = at(&b, &plan, Transition::fail(10, "Connection refused"), now);
    assert_eq!(
        (b.status, b.blocked_reason.as_deref()),
        (Status::Blocked, Some("all 6 attempts failed"))
    );

    // A persistent failure blocks at once, whatever attempts remain.
    let (mut c, plan) = fresh();
    c = at(
        &c,
        &plan,
        Transition::fail(0, "Permission denied (publickey)"),
        t0(),
    );
    assert_eq!(
        (c.status, c.last_category, c.attempt),
        (Status::Blocked, Some(Category::Persistent), 1)
    );
    assert!(c.blocked_reason.as_deref().unwrap().contains("persistent"));
}

#[test]
fn init_records_state_0_as_done_unless_it_has_work() {
    let req = |plan: Plan| InitRequest {
        plan,
        ..InitRequest::sample("b")
    };
    let (b, e) = req(Plan::default_plan()).new_build("l".into(), t0());
    assert_eq!((b.current_state, b.status), (Some(0), Status::Pending));
    assert_eq!(e.state, Some(0));
    assert!(e
        .message
        .unwrap()
        .ends_with("; state 0 (init) recorded as done"));
    // The natural next step is state 5, straight after init.
    let plan = Plan::default_plan();
    let started = at(&b, &plan, Transition::Start { state: 5 }, t0());
    assert_eq!((started.active_state, started.attempt), (Some(5), 1));

    let (b, e) = req(Plan::default_plan_with_work_at_0()).new_build("l".into(), t0());
    assert_eq!(
        (b.current_state, b.status, e.state),
        (None, Status::Pending, None)
    );

    // A plan of state 0 alone is complete as soon as it exists.
    let only = Plan::from_toml(
        "name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(
        req(only).new_build("l".into(), t0()).0.status,
        Status::Completed
    );
}

#[test]
fn a_late_write_from_a_worker_that_lost_its_lease_is_fenced() {
    let (b, plan) = fresh();
    let ttl = Duration::from_secs(30);
    let w1 = Ctx {
        owner: Some("w1"),
        lease_ttl: Some(ttl),
        ..Ctx::at(t0())
    };
    let b = apply(&b, &plan, &Transition::Start { state: 0 }, &w1)
        .unwrap()
        .build;
    let w1_done = Ctx {
        fence: Some(b.attempt),
        lease_ttl: None,
        now: t0() + Duration::from_secs(5),
        ..w1
    };
    // While its attempt is current, the holder's fenced write goes through...
    assert!(apply(&b, &plan, &Transition::complete(0), &w1_done).is_ok());
    // ...but not with another attempt number, nor from another owner.
    let wrong = Ctx {
        fence: Some(2),
        ..w1_done
    };
    assert!(matches!(
        apply(&b, &plan, &Transition::complete(0), &wrong),
        Err(Error::Fenced(_))
    ));
    // w1 stalls past its lease; w2 takes over (attempt 2) and fails.
    let late = t0() + Duration::from_secs(40);
    let w2 = Ctx {
        owner: Some("w2"),
        lease_ttl: Some(ttl),
        ..Ctx::at(late)
    };
    let b2 = apply(&b, &plan, &Transition::Start { state: 0 }, &w2)
        .unwrap()
        .build;
    assert_eq!((b2.attempt, b2.lease_owner.as_deref()), (2, Some("w2")));
    let w2_done = Ctx {
        fence: Some(2),
        lease_ttl: None,
        ..w2
    };
    let b3 = apply(
        &b2,
        &plan,
        &Transition::fail(0, "connection reset"),
        &w2_done,
    )
    .unwrap()
    .build;
    assert_eq!(b3.status, Status::Waiting);
    // w1 wakes up: every write about its attempt 1 is refused, whatever the status.
    let w1_late = Ctx {
        now: late + Duration::from_secs(120),
        ..w1_done
    };
    for build in [&b2, &b3] {
        for t in [
            Transition::complete(0),
            Transition::fail(0, "x"),
            Transition::Interrupt {
                state: 0,
                signal: "SIGTERM".into(),
            },
        ] {
            match apply(build, &plan, &t, &w1_late) {
                Err(Error::Fenced(m)) => assert!(
                    m.contains("attempt 1") && m.contains("no longer current"),
                    "{m}"
                ),
                other => panic!("{t:?} on {:?}: {other:?}", build.status),
            }
        }
    }
    // A person's write (no fence) still applies to the current attempt.
    let person = Ctx::at(late + Duration::from_secs(200));
    assert!(apply(&b3, &plan, &Transition::complete(0), &person).is_ok());
}

#[test]
fn leases_exclude_other_workers_until_they_expire() {
    let (b, plan) = fresh();
    let ttl = Duration::from_secs(30);
    let w1 = Ctx {
        owner: Some("w1"),
        lease_ttl: Some(ttl),
        ..Ctx::at(t0())
    };
    let b = apply(&b, &plan, &Transition::Start { state: 0 }, &w1)
        .unwrap()
        .build;
    assert_eq!(
        (b.lease_owner.as_deref(), b.lease_expires_at),
        (Some("w1"), Some(t0() + ttl))
    );
    // Another worker, or update-state, cannot touch it while the lease lives.
    let w2 = Ctx {
        owner: Some("w2"),
        lease_ttl: Some(ttl),
        ..Ctx::at(t0() + Duration::from_secs(10))
    };
    for t in [
        Transition::Start { state: 0 },
        Transition::complete(0),
        Transition::fail(0, "x"),
    ] {
        assert!(
            matches!(apply(&b, &plan, &t, &w2), Err(Error::Leased(m)) if m.to_string().contains("held by w1")),
            "{t:?}"
        );
    }
    // The holder can finish its own attempt.
    let done = apply(
        &b,
        &plan,
        &Transition::complete(0),
        &Ctx {
            owner: Some("w1"),
            ..w2
        },
    )
    .unwrap()
    .build;
    assert_eq!((done.current_state, done.lease_owner), (Some(0), None));
    // After expiry, another worker takes over, and that is recorded.
    let w2_late = Ctx {
        now: t0() + Duration::from_secs(31),
        ..w2
    };
    let c = apply(&b, &plan, &Transition::Start { state: 0 }, &w2_late).unwrap();
    assert_eq!(c.events[0].kind, EventKind::Takeover);
    assert!(c.events[0]
        .message
        .as_deref()
        .unwrap()
        .contains("lease of w1 expired"));
    assert_eq!(
        (c.events[1].kind, c.events[1].attempt),
        (EventKind::Start, Some(2))
    );
    assert_eq!(c.build.lease_owner.as_deref(), Some("w2"));
}

#[test]
fn interruption_does_not_use_up_an_attempt() {
    let (b, plan) = fresh();
    let b = at(&b, &plan, Transition::Start { state: 0 }, t0());
    let b = at(
        &b,
        &plan,
        Transition::Interrupt {
            state: 0,
            signal: "SIGTERM".into(),
        },
        t0(),
    );
    assert_eq!(
        (b.status, b.next_attempt_at, b.extra_attempts),
        (Status::Waiting, Some(t0()), 1)
    );
    assert_eq!(b.last_error.as_deref(), Some("interrupted by SIGTERM"));
    assert_eq!(attempts_allowed(&b, &plan, 0), 4);
    let m = refused(
        &b,
        &plan,
        Transition::Interrupt {
            state: 0,
            signal: "SIGINT".into(),
        },
    );
    assert!(m.contains("not running"), "{m}");
}

#[test]
fn skip_rollback_cancel() {
    let (mut b, plan) = fresh();
    let why = |s: &str| s.to_string();
    assert!(refused(
        &b,
        &plan,
        Transition::Skip {
            state: 5,
            reason: why("x")
        }
    )
    .contains("only the next or the failed state"));
    assert!(refused(
        &b,
        &plan,
        Transition::Skip {
            state: 7,
            reason: why("x")
        }
    )
    .contains("not in its plan"));
    assert!(
        matches!(apply(&b, &plan, &Transition::Skip { state: 0, reason: "  ".into() }, &Ctx::at(t0())), Err(e @ Error::NeedsReason(_)) if e.to_string().contains("--reason") && e.exit_code() == crate::exit::INVALID_INPUT)
    );
    b = step(
        &b,
        &plan,
        Transition::Skip {
            state: 0,
            reason: why("pre-seeded"),
        },
    );
    assert_eq!((b.current_state, b.status), (Some(0), Status::Pending));
    assert!(refused(
        &b,
        &plan,
        Transition::Rollback {
            to: None,
            reason: why("x")
        }
    )
    .contains("cannot roll back past state 0 (init)"));
    b = step(&b, &plan, Transition::complete(5));
    b = step(&b, &plan, Transition::complete(10));
    b = step(&b, &plan, Transition::fail(15, "Permission denied"));
    assert_eq!(b.status, Status::Blocked);
    // The failed state can be skipped.
    let skipped = step(
        &b,
        &plan,
        Transition::Skip {
            state: 15,
            reason: why("not needed for this image"),
        },
    );
    assert_eq!(
        (
            skipped.current_state,
            skipped.active_state,
            skipped.last_error
        ),
        (Some(15), None, None)
    );
    // Rollback: default one state back, or to a named earlier state.
    let r = step(
        &b,
        &plan,
        Transition::Rollback {
            to: None,
            reason: why("bad image"),
        },
    );
    assert_eq!(
        (r.current_state, r.active_state, r.status),
        (Some(5), None, Status::Pending)
    );
    let r = step(
        &b,
        &plan,
        Transition::Rollback {
            to: Some(0),
            reason: why("rebuild"),
        },
    );
    assert_eq!(r.current_state, Some(0));
    assert!(refused(
        &b,
        &plan,
        Transition::Rollback {
            to: Some(10),
            reason: why("x")
        }
    )
    .contains("not before the last completed state"));
    assert!(refused(
        &b,
        &plan,
        Transition::Rollback {
            to: Some(3),
            reason: why("x")
        }
    )
    .contains("not in its plan"));
    // Cancel stops everything.
    let c = step(
        &b,
        &plan,
        Transition::Cancel {
            reason: why("superseded"),
        },
    );
    assert_eq!(c.status, Status::Cancelled);
    assert!(refused(&c, &plan, Transition::Start { state: 15 }).contains("cancelled"));
    assert!(refused(
        &c,
        &plan,
        Transition::Cancel {
            reason: why("again")
        }
    )
    .contains("cancelled"));
    assert!(refused(
        &c,
        &plan,
        Transition::Rollback {
            to: None,
            reason: why("x")
        }
    )
    .contains("cancelled"));
    let fresh_build = fresh().0;
    assert!(refused(
        &fresh_build,
        &plan,
        Transition::Rollback {
            to: None,
            reason: why("x")
        }
    )
    .contains("no state is completed"));
    assert!(refused(
        &fresh_build,
        &plan,
        Transition::Retry {
            state: 0,
            reason: why("x")
        }
    )
    .contains("has not failed"));
}

#[test]
fn complete_measures_duration_from_start() {
    let (b, plan) = fresh();
    let b = at(&b, &plan, Transition::Start { state: 0 }, t0());
    let c = apply(
        &b,
        &plan,
        &Transition::complete(0),
        &Ctx::at(t0() + Duration::from_millis(1500)),
    )
    .unwrap();
    assert_eq!(c.events[0].duration_ms, Some(1500));
    assert_eq!(c.events[0].attempt, Some(1));
}

#[test]
fn nonsense_is_refused() {
    let (mut b, plan) = fresh();
    assert!(refused(&b, &plan, Transition::Start { state: 7 })
        .contains("state 7 is not in its plan 'classic-image-build'"));
    assert!(
        refused(&b, &plan, Transition::complete(5)).contains("the next state is state 0 (init)")
    );
    b = step(&b, &plan, Transition::complete(0));
    b = step(&b, &plan, Transition::complete(5));
    assert!(refused(&b, &plan, Transition::Start { state: 0 }).contains("move backwards"));
    assert!(refused(&b, &plan, Transition::complete(5)).contains("move backwards"));
    assert!(
        refused(&b, &plan, Transition::Start { state: 15 }).contains("the next state is state 10")
    );
    b = step(&b, &plan, Transition::Start { state: 10 });
    assert!(refused(&b, &plan, Transition::Start { state: 15 })
        .contains("state 10 (green-image-validation) is running"));
    b = step(&b, &plan, Transition::fail(10, "x"));
    assert!(refused(&b, &plan, Transition::complete(15)).contains("failed and waits for a retry"));
}

#[test]
fn completed_build_refuses_transitions_but_takes_metadata() {
    let (mut b, plan) = fresh();
    for s in plan.states.clone() {
        b = step(&b, &plan, Transition::complete(s.id));
    }
    assert!(refused(&b, &plan, Transition::Start { state: 100 }).contains("already completed"));
    let c = apply(
        &b,
        &plan,
        &Transition::Meta {
            pairs: vec![("ami".into(), "ami-123".into())],
        },
        &Ctx::at(t0()),
    )
    .unwrap();
    assert_eq!(c.meta, vec![("ami".to_string(), "ami-123".to_string())]);
    assert_eq!(c.build.status, Status::Completed);
    // A completed build can be rolled back on purpose (e.g. to publish again).
    let r = step(
        &b,
        &plan,
        Transition::Rollback {
            to: Some(90),
            reason: "republish".into(),
        },
    );
    assert_eq!((r.status, r.current_state), (Status::Pending, Some(90)));
}

#[test]
fn inputs_are_validated() {
    for bad in [
        "",
        "a/b",
        "-x",
        "sp ace",
        &"x".repeat(129),
        "semi;colon",
        "tab\t",
    ] {
        assert!(
            matches!(validate_build_id(bad), Err(Error::InvalidInput(_))),
            "{bad:?}"
        );
    }
    for good in ["b1", "img-2026.11.22_rhel9", &"x".repeat(128)] {
        validate_build_id(good).unwrap();
    }
    assert_eq!(
        parse_meta_pair("A=b=c").unwrap(),
        ("A".into(), "b=c".into())
    );
    assert_eq!(parse_meta_pair("_k=").unwrap(), ("_k".into(), "".into()));
    for bad in ["novalue", "1A=x", "a-b=x", "=x"] {
        assert!(
            matches!(parse_meta_pair(bad), Err(Error::InvalidInput(_))),
            "{bad}"
        );
    }
}

#[test]
fn a_lease_owner_must_say_something_on_one_line() {
    let (b, plan) = fresh();
    let long = "o".repeat(257);
    for bad in ["", "  ", "a\nb", "tab\there", long.as_str()] {
        let ctx = Ctx {
            owner: Some(bad),
            ..Ctx::at(t0())
        };
        assert!(
            matches!(
                apply(&b, &plan, &Transition::Start { state: 0 }, &ctx),
                Err(Error::InvalidInput(m)) if m.contains("invalid lease owner")
            ),
            "{bad:?}"
        );
    }
    let fine = "o".repeat(256);
    for good in [
        "w1",
        "concourse:images/bake#42",
        "ünïcode@host",
        fine.as_str(),
    ] {
        let ctx = Ctx {
            owner: Some(good),
            lease_ttl: Some(Duration::from_secs(30)),
            ..Ctx::at(t0())
        };
        let started = apply(&b, &plan, &Transition::Start { state: 0 }, &ctx).unwrap();
        assert_eq!(started.build.lease_owner.as_deref(), Some(good));
    }
}
