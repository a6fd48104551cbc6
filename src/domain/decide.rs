//! `decide()`: what a pipeline should do next with a build. Pure: the build, its plan and
//! the time come in, a [`Decision`] comes out, so every case is table-tested.

use std::time::SystemTime;

use serde::Serialize;

use crate::time;

use crate::error::{Hint, Refusal, Syntax};
use crate::exit;
use crate::model::{attempts_allowed, Build, Status};
use crate::plan::Plan;
use crate::policy::Category;

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
    /// The state to run (or the one running, waiting or blocked).
    pub next_state: Option<u8>,
    pub next_state_name: Option<String>,
    /// One sentence a person can act on, as the commands write it (a front end with
    /// another syntax writes it its own way: [`Decision::in_syntax`]).
    pub reason: String,
    /// The reason with what a person can do as hints, when it names something to do.
    #[serde(skip)]
    pub hinted: Option<Refusal>,
    /// The attempt the decision is about: the next one for start/resume/retry/wait, the
    /// current one for busy/blocked.
    pub next_attempt: Option<u32>,
    /// How many attempts the state's policy allows (plus any granted by a person).
    pub max_attempts: Option<u32>,
    /// For `wait`: when the retry becomes due.
    #[serde(with = "crate::time::rfc3339::option")]
    pub not_before: Option<SystemTime>,
    /// The category of the last failure, when the decision follows one.
    pub category: Option<Category>,
    /// Completed states that must run again, earliest first, with what changed (empty
    /// unless a plan declares inputs or verify commands; see docs/plan.md#inputs).
    pub stale: Vec<crate::manifest::Stale>,
    /// For `wait` on other builds: the dependencies of `next_state` that do not hold yet
    /// (`crate::deps`, docs/plan.md#dependencies); left out when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<crate::deps::Unmet>,
}

impl Decision {
    /// `d` with a reason that names what to do.
    fn hinted(d: Decision, hinted: Refusal) -> Decision {
        Decision {
            reason: hinted.render(Syntax::Cli),
            hinted: Some(hinted),
            ..d
        }
    }

    /// The decision as a front end with `syntax` shows it: what to do in its own terms
    /// (the Python `Store`, the Concourse resource), as refusals are.
    pub fn in_syntax(mut self, syntax: Syntax) -> Decision {
        if let Some(h) = &self.hinted {
            self.reason = h.render(syntax);
        }
        self
    }

    fn new(action: Action, plan: &Plan, state: Option<u8>, reason: String) -> Decision {
        Decision {
            decision: action,
            next_state: state,
            next_state_name: state.and_then(|s| plan.state(s)).map(|s| s.name.clone()),
            reason,
            hinted: None,
            next_attempt: None,
            max_attempts: None,
            not_before: None,
            category: None,
            stale: Vec::new(),
            waiting_for: Vec::new(),
        }
    }

    fn attempt(mut self, b: Option<&Build>, plan: &Plan, n: u32) -> Decision {
        self.next_attempt = Some(n);
        self.max_attempts = self.next_state.map(|s| match b {
            Some(b) => attempts_allowed(b, plan, s),
            None => crate::policy::max_attempts(plan.retry_for(s)),
        });
        self
    }

    /// "attempt 2 of 5"
    pub fn attempt_text(&self) -> Option<String> {
        Some(format!(
            "attempt {} of {}",
            self.next_attempt?, self.max_attempts?
        ))
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

/// [`decide`], knowing which completed states are stale: a build between states (or
/// completed) reruns from the earliest stale one. A build with a state running, waiting
/// or blocked is decided on that state first; the stale list is reported either way.
pub fn decide_with_stale(
    build: Option<&Build>,
    plan: &Plan,
    now: SystemTime,
    stale: Vec<crate::manifest::Stale>,
) -> Decision {
    let mut d = decide(build, plan, now);
    if let (Some(b), Some(first)) = (build, stale.first()) {
        if matches!(b.status, Status::Pending | Status::Completed) {
            let later = stale.len() - 1;
            let reason = format!(
                "{}; rerun from {}{}",
                first.sentence(),
                plan.label(first.state),
                match later {
                    0 => String::new(),
                    1 => " and the completed state after it".to_string(),
                    n => format!(" and the {n} completed states after it"),
                }
            );
            d = Decision::new(Action::Rerun, plan, Some(first.state), reason)
                .attempt(None, plan, 1);
        }
    }
    d.stale = stale;
    d
}

/// `d`, unless it says to run a state (start, resume, retry, rerun) whose dependencies
/// on other builds do not all hold (`unmet`, judged by [`crate::deps::judge`]): then
/// `wait` for them, naming each parent and what it lacks. A parent that completes its
/// state lets the next decision go ahead; nothing is written meanwhile.
pub fn gate(d: Decision, plan: &Plan, unmet: Vec<crate::deps::Unmet>) -> Decision {
    let runs = matches!(
        d.decision,
        Action::Start | Action::Resume | Action::Retry | Action::Rerun
    );
    if !runs || unmet.is_empty() {
        return d;
    }
    waiting_for(d, plan, unmet)
}

/// `d` as a `wait` for the other builds of `unmet` (not empty), naming each parent and
/// what it lacks ([`gate`] for a go-ahead; run-state for the state it was asked to run).
pub fn waiting_for(d: Decision, plan: &Plan, unmet: Vec<crate::deps::Unmet>) -> Decision {
    let label = d
        .next_state
        .map_or("the next state".into(), |s| plan.label(s));
    let reasons: Vec<&str> = unmet.iter().map(|u| u.reason.as_str()).collect();
    Decision {
        decision: Action::Wait,
        reason: format!(
            "{label} waits for another build: {}; it goes ahead once {}",
            reasons.join("; "),
            if unmet.len() == 1 {
                "it has"
            } else {
                "they have"
            }
        ),
        hinted: None,
        not_before: None,
        waiting_for: unmet,
        ..d
    }
}

/// What to do next with `build` (`None` when there is no record of it) at `now`.
pub fn decide(build: Option<&Build>, plan: &Plan, now: SystemTime) -> Decision {
    let Some(b) = build else {
        // What the build will start with once init-state has created it.
        let first = plan
            .next_after(plan.done_at_init().map(|s| s.id))
            .unwrap_or(plan.first());
        return Decision::new(
            Action::Start,
            plan,
            Some(first.id),
            format!(
                "no record of this build: create it with init-state, then run {}",
                plan.label(first.id)
            ),
        )
        .attempt(None, plan, 1);
    };
    let id = &b.build_id;
    let active = b.active_state.unwrap_or_default();
    let label = plan.label(active);
    let error = || headline(b.last_error.as_deref().unwrap_or("no message"), 200);
    let category = |mut d: Decision| {
        d.category = b.last_category;
        d
    };
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
        Status::Running => match (b.lease_owner.as_deref(), b.lease_expires_at) {
            (Some(owner), Some(expires)) if expires <= now => Decision::new(
                Action::Resume,
                plan,
                Some(active),
                format!(
                    "the lease of {owner} on {label} expired at {}: its worker is presumed dead; resume {label} (attempt {} is abandoned)",
                    time::format(expires),
                    b.attempt
                ),
            )
            .attempt(Some(b), plan, b.attempt + 1),
            (owner, expires) => {
                let by = match (owner, expires) {
                    (Some(o), Some(e)) => format!("held by {o} until {}", time::format(e)),
                    _ => "on another worker".to_string(),
                };
                let d = Decision::new(Action::Busy, plan, Some(active), String::new())
                    .attempt(Some(b), plan, b.attempt);
                let reason = format!(
                    "{label} is in progress ({}), {by}",
                    d.attempt_text().unwrap_or_default()
                );
                Decision { reason, ..d }
            }
        },
        Status::Waiting => {
            let due = b.next_attempt_at.unwrap_or(now);
            let d = Decision::new(Action::Retry, plan, Some(active), String::new())
                .attempt(Some(b), plan, b.attempt + 1);
            let attempt = d.attempt_text().unwrap_or_default();
            let cat = b.last_category.map_or(String::new(), |c| format!(" ({c})"));
            if due <= now {
                let reason = format!("{label} failed{cat}: {}; retry it now ({attempt})", error());
                category(Decision { reason, ..d })
            } else {
                let wait = due.duration_since(now).unwrap_or_default();
                let reason = format!(
                    "{label} failed{cat}: {}; retry in {} at {} ({attempt})",
                    error(),
                    time::format_duration(wait),
                    time::format(due)
                );
                category(Decision {
                    decision: Action::Wait,
                    not_before: Some(due),
                    reason,
                    ..d
                })
            }
        }
        Status::Blocked if b.last_category == Some(Category::Prerequisite) => {
            let d = Decision::new(Action::Blocked, plan, Some(active), String::new())
                .attempt(Some(b), plan, b.attempt + 1);
            let hinted = Refusal::new(format!(
                "the prerequisite of {label} failed, so it did not start (no attempt used): {}; fix the cause, then ",
                error()
            ))
            .hint(Hint::verb(id, "retry", active, true));
            category(Decision::hinted(d, hinted))
        }
        Status::Blocked => {
            let d = Decision::new(Action::Blocked, plan, Some(active), String::new())
                .attempt(Some(b), plan, b.attempt);
            let hinted = Refusal::new(format!(
                "{label} failed ({}): {}; {}; needs a person: fix the cause, then ",
                d.attempt_text().unwrap_or_default(),
                error(),
                b.blocked_reason.as_deref().unwrap_or("no automatic retry left")
            ))
            .hint(Hint::verb(id, "retry", active, true))
            .then(" (or skip it)");
            category(Decision::hinted(d, hinted))
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
            )
            .attempt(Some(b), plan, 1),
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
    use crate::model::{apply, Ctx, InitRequest, Transition};
    use std::time::Duration;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }
    const MIN: Duration = Duration::from_secs(60);

    /// The build after `ts`, the i-th applied at t0 + 2h·i (every retry in the built-in
    /// plan is due by then) with a jitter draw of 0; also the time of the last one.
    fn build_after(ts: &[Transition], ctx: Option<Ctx<'_>>) -> (Build, Plan, SystemTime) {
        let plan = Plan::default_plan_with_work_at_0();
        let req = InitRequest {
            plan: plan.clone(),
            ..InitRequest::sample("b")
        };
        let mut b = req.new_build("l".into(), t0()).0;
        let base = ctx.unwrap_or(Ctx {
            jitter: 0.0,
            ..Ctx::at(t0())
        });
        let mut last = t0();
        for (i, t) in ts.iter().enumerate() {
            last = t0() + 120 * MIN * i as u32;
            b = apply(&b, &plan, t, &Ctx { now: last, ..base })
                .unwrap()
                .build;
        }
        (b, plan, last)
    }

    #[test]
    fn decisions_table() {
        use Transition::*;
        let c = Transition::complete;
        let fail = |state, msg: &str| Transition::fail(state, msg);
        // Complete every state of the built-in plan up to and including `last`.
        let through = |last: u8| (0..=last).step_by(5).map(c).collect::<Vec<_>>();
        // (transitions, asked this long after the last, decision, next state, attempt
        // text, part of the reason)
        type Case = (
            Vec<Transition>,
            Duration,
            Action,
            Option<u8>,
            Option<&'static str>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                vec![],
                Duration::ZERO,
                Action::Resume,
                Some(0),
                Some("attempt 1 of 3"),
                "begin with state 0 (init)",
            ),
            (
                vec![c(0)],
                Duration::ZERO,
                Action::Resume,
                Some(5),
                Some("attempt 1 of 4"),
                "state 0 (init) completed; resume at state 5 (kickstart)",
            ),
            (
                vec![c(0), Start { state: 5 }],
                Duration::ZERO,
                Action::Busy,
                Some(5),
                Some("attempt 1 of 4"),
                "state 5 (kickstart) is in progress (attempt 1 of 4), on another worker",
            ),
            // kickstart backoff: 5 min with jitter spread over [2.5, 5]; draw 0 gives 2.5 min.
            (
                vec![c(0), fail(5, "mirror timed out")],
                MIN,
                Action::Wait,
                Some(5),
                Some("attempt 2 of 4"),
                "failed (transient): mirror timed out; retry in 1m 30s",
            ),
            (
                vec![c(0), fail(5, "mirror timed out")],
                3 * MIN,
                Action::Retry,
                Some(5),
                Some("attempt 2 of 4"),
                "retry it now (attempt 2 of 4)",
            ),
            (
                vec![c(0), c(5), fail(10, "it's broken")],
                Duration::ZERO,
                Action::Wait,
                Some(10),
                Some("attempt 2 of 5"),
                "failed (unknown): it's broken",
            ),
            (
                vec![c(0), c(5), fail(10, "it's broken")],
                MIN,
                Action::Retry,
                Some(10),
                Some("attempt 2 of 5"),
                "retry it now",
            ),
            (
                vec![c(0), c(5), fail(10, "Permission denied")],
                Duration::ZERO,
                Action::Blocked,
                Some(10),
                Some("attempt 1 of 5"),
                "the failure is persistent",
            ),
            (
                vec![c(0), fail(5, "x"), fail(5, "x"), fail(5, "x"), fail(5, "x")],
                99 * MIN,
                Action::Blocked,
                Some(5),
                Some("attempt 4 of 4"),
                "all 4 attempts failed; needs a person",
            ),
            (
                [through(65), vec![fail(70, "tests red")]].concat(),
                59 * MIN,
                Action::Wait,
                Some(70),
                Some("attempt 2 of 2"),
                "retry in 1m",
            ),
            (
                [
                    through(65),
                    vec![fail(70, "tests red"), fail(70, "tests red")],
                ]
                .concat(),
                Duration::ZERO,
                Action::Blocked,
                Some(70),
                Some("attempt 2 of 2"),
                "the policy calls a person",
            ),
            (
                vec![
                    c(0),
                    Cancel {
                        reason: "dup".into(),
                    },
                ],
                Duration::ZERO,
                Action::Blocked,
                None,
                None,
                "was cancelled",
            ),
            (
                vec![
                    c(0),
                    fail(5, "x"),
                    Retry {
                        state: 5,
                        reason: "fixed".into(),
                    },
                ],
                Duration::ZERO,
                Action::Retry,
                Some(5),
                Some("attempt 2 of 4"),
                "retry it now",
            ),
        ];
        for (ts, after, action, next, attempt, reason) in cases {
            let (b, plan, last) = build_after(&ts, None);
            let d = decide(Some(&b), &plan, last + after);
            assert_eq!(d.decision, action, "{ts:?}: {d:?}");
            assert_eq!(d.next_state, next, "{ts:?}");
            assert_eq!(d.attempt_text().as_deref(), attempt, "{ts:?}");
            assert!(d.reason.contains(reason), "{ts:?}: {}", d.reason);
        }
    }

    #[test]
    fn wait_reports_when_and_category() {
        let (b, plan, last) = build_after(
            &[Transition::complete(0), Transition::fail(5, "HTTP 503")],
            None,
        );
        let d = decide(Some(&b), &plan, last);
        assert_eq!(d.decision, Action::Wait);
        assert_eq!(d.not_before, Some(last + Duration::from_secs(150)));
        assert_eq!(d.category, Some(Category::Transient));
        assert_eq!(d.decision.exit_code(), exit::WAIT);
    }

    #[test]
    fn an_expired_lease_makes_a_running_build_resumable() {
        let ctx = Ctx {
            owner: Some("host:42"),
            lease_ttl: Some(MIN),
            ..Ctx::at(t0())
        };
        let (b, plan, _) = build_after(&[Transition::Start { state: 0 }], Some(ctx));
        let live = decide(Some(&b), &plan, t0() + Duration::from_secs(59));
        assert_eq!(live.decision, Action::Busy);
        assert!(
            live.reason.contains("held by host:42 until"),
            "{}",
            live.reason
        );
        let dead = decide(Some(&b), &plan, t0() + MIN);
        assert_eq!((dead.decision, dead.next_state), (Action::Resume, Some(0)));
        assert_eq!(dead.attempt_text().as_deref(), Some("attempt 2 of 3"));
        assert!(dead.reason.contains("presumed dead"), "{}", dead.reason);
        assert_eq!(dead.decision.exit_code(), exit::OK);
    }

    #[test]
    fn unknown_build_starts_and_completed_build_stops() {
        let plan = Plan::default_plan_with_work_at_0();
        let d = decide(None, &plan, t0());
        assert_eq!((d.decision, d.next_state), (Action::Start, Some(0)));
        assert_eq!(d.next_state_name.as_deref(), Some("init"));
        assert_eq!(d.decision.exit_code(), exit::OK);

        let all: Vec<Transition> = plan
            .states
            .iter()
            .map(|s| Transition::complete(s.id))
            .collect();
        let (b, plan, _) = build_after(&all, None);
        let d = decide(Some(&b), &plan, t0());
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
