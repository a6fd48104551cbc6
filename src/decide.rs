//! `decide()`: what a pipeline should do next with a build. Pure: the build, its plan and
//! the time come in, a [`Decision`] comes out, so every case is table-tested.

use std::time::SystemTime;

use serde::Serialize;

use crate::exit;
use crate::model::{Build, Status};
use crate::plan::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// No record of the build: create it with init-state and run the first state.
    Start,
    /// The build stopped between states: run `next_state`.
    Resume,
    /// A failed state may be tried again now.
    Retry,
    /// A retry is scheduled but not yet due.
    Wait,
    /// Needs a person.
    Blocked,
    /// A state is in progress elsewhere.
    Busy,
    /// Inputs of a completed state changed: run it again.
    Rerun,
    /// Nothing left to do.
    Completed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Resume => "resume",
            Action::Retry => "retry",
            Action::Wait => "wait",
            Action::Blocked => "blocked",
            Action::Busy => "busy",
            Action::Rerun => "rerun",
            Action::Completed => "completed",
        }
    }

    /// check-state's exit code for this decision (docs/exit-codes.md): 0 means "go ahead".
    pub fn exit_code(self) -> i32 {
        match self {
            Action::Start | Action::Resume | Action::Retry | Action::Rerun => exit::OK,
            Action::Completed => exit::COMPLETED,
            Action::Busy => exit::BUSY,
            Action::Wait => exit::WAIT,
            Action::Blocked => exit::BLOCKED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub decision: Action,
    /// The state to run (or the one running, failed or waiting).
    pub next_state: Option<u8>,
    pub next_state_name: Option<String>,
    /// One sentence a person can act on.
    pub reason: String,
}

impl Decision {
    fn new(action: Action, plan: &Plan, state: Option<u8>, reason: String) -> Decision {
        Decision {
            decision: action,
            next_state: state,
            next_state_name: state.and_then(|s| plan.state(s)).map(|s| s.name.clone()),
            reason,
        }
    }
}

/// The first line of an error message, cut to `max` characters, for one-line reasons.
pub fn headline(message: &str, max: usize) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let line = line.trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// What to do next with `build` (`None` when there is no record of it).
pub fn decide(build: Option<&Build>, plan: &Plan, _now: SystemTime) -> Decision {
    let Some(b) = build else {
        let first = plan.first();
        return Decision::new(
            Action::Start,
            plan,
            Some(first.id),
            format!(
                "no record of this build: create it with init-state, then run {}",
                plan.label(first.id)
            ),
        );
    };
    let id = &b.build_id;
    match b.status {
        Status::Completed => Decision::new(
            Action::Completed,
            plan,
            None,
            format!("build '{id}' completed every state of plan '{}'", plan.name),
        ),
        Status::Cancelled => Decision::new(
            Action::Blocked,
            plan,
            b.active_state,
            format!("build '{id}' was cancelled; start a new build id to build again"),
        ),
        Status::Running => {
            let s = b.active_state.unwrap_or_default();
            Decision::new(
                Action::Busy,
                plan,
                Some(s),
                format!(
                    "{} is in progress (attempt {}) on another worker",
                    plan.label(s),
                    b.attempt
                ),
            )
        }
        Status::Failed | Status::Waiting | Status::Blocked => {
            let s = b.active_state.unwrap_or_default();
            Decision::new(
                Action::Blocked,
                plan,
                Some(s),
                format!(
                    "{} failed (attempt {}): {}; needs a person: fix the cause, then run `update-state {id} start {s}`",
                    plan.label(s),
                    b.attempt,
                    headline(b.last_error.as_deref().unwrap_or("no message"), 200)
                ),
            )
        }
        Status::Pending => match plan.next_after(b.current_state) {
            Some(next) => Decision::new(
                Action::Resume,
                plan,
                Some(next.id),
                match b.current_state {
                    None => format!("no state has run yet: begin with {}", plan.label(next.id)),
                    Some(c) => format!(
                        "{} completed; resume at {}",
                        plan.label(c),
                        plan.label(next.id)
                    ),
                },
            ),
            // Every state done but the status says otherwise: the plan is the truth.
            None => Decision::new(
                Action::Completed,
                plan,
                None,
                format!("build '{id}' completed every state of plan '{}'", plan.name),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{apply, InitRequest, Transition};
    use std::time::Duration;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn build_after(ts: &[Transition]) -> (Build, Plan) {
        let plan = Plan::default_plan();
        let req = InitRequest {
            build_id: "b".into(),
            cloud: "aws".into(),
            image: "rhel9".into(),
            plan: plan.clone(),
            meta: vec![],
        };
        let mut b = req.new_build("l".into(), now()).0;
        for t in ts {
            b = apply(&b, &plan, t, now()).unwrap().build;
        }
        (b, plan)
    }

    #[test]
    fn decisions_table() {
        use Transition::*;
        let fail = |state| Fail {
            state,
            message: "it's broken\nsecond line".into(),
            category: None,
            exit_code: Some(1),
        };
        let cases: Vec<(Vec<Transition>, Action, Option<u8>, &str)> = vec![
            (vec![], Action::Resume, Some(0), "begin with state 0 (init)"),
            (
                vec![Complete { state: 0 }],
                Action::Resume,
                Some(5),
                "state 0 (init) completed; resume at state 5 (kickstart)",
            ),
            (
                vec![Complete { state: 0 }, Start { state: 5 }],
                Action::Busy,
                Some(5),
                "state 5 (kickstart) is in progress (attempt 1)",
            ),
            (
                vec![Complete { state: 0 }, Complete { state: 5 }, fail(10)],
                Action::Blocked,
                Some(10),
                "state 10 (green-image-validation) failed (attempt 1): it's broken; needs a person",
            ),
            (
                vec![Complete { state: 0 }, fail(5), Start { state: 5 }],
                Action::Busy,
                Some(5),
                "attempt 2",
            ),
            (
                vec![Complete { state: 0 }, fail(5), Complete { state: 5 }],
                Action::Resume,
                Some(10),
                "resume at state 10",
            ),
        ];
        for (ts, action, next, reason) in cases {
            let (b, plan) = build_after(&ts);
            let d = decide(Some(&b), &plan, now());
            assert_eq!(d.decision, action, "{ts:?}: {d:?}");
            assert_eq!(d.next_state, next, "{ts:?}");
            assert!(d.reason.contains(reason), "{ts:?}: {}", d.reason);
        }
    }

    #[test]
    fn unknown_build_starts_and_completed_build_stops() {
        let plan = Plan::default_plan();
        let d = decide(None, &plan, now());
        assert_eq!((d.decision, d.next_state), (Action::Start, Some(0)));
        assert_eq!(d.next_state_name.as_deref(), Some("init"));
        assert_eq!(d.decision.exit_code(), exit::OK);

        let all: Vec<Transition> = plan
            .states
            .iter()
            .map(|s| Transition::Complete { state: s.id })
            .collect();
        let (b, plan) = build_after(&all);
        let d = decide(Some(&b), &plan, now());
        assert_eq!((d.decision, d.next_state), (Action::Completed, None));
        assert_eq!(d.decision.exit_code(), exit::COMPLETED);
    }

    #[test]
    fn headline_cuts_long_messages() {
        assert_eq!(headline("\n  first \nsecond", 80), "first");
        assert_eq!(headline(&"é".repeat(10), 4), "éééé…");
        assert_eq!(headline("", 4), "");
    }
}
