//! Leases, fencing and the attempt arithmetic a transition checks before it applies.

use std::time::SystemTime;

use crate::error::{Hint, Refusal};
use crate::plan::Plan;
use crate::{time, Error, Result};

use super::transition::refuse;
use super::*;

pub(super) fn lease_live(b: &Build, now: SystemTime) -> bool {
    b.lease_owner.is_some() && b.lease_expires_at.is_some_and(|t| t > now)
}

/// Refuse when another live holder has the lease.
pub(super) fn check_lease(b: &Build, plan: &Plan, ctx: &Ctx<'_>, verb: &str) -> Result<()> {
    if lease_live(b, ctx.now) && b.lease_owner.as_deref() != ctx.owner {
        return Err(Error::Leased(
            Refusal::new(format!(
                "build '{}': cannot {verb}: {} is held by {} until {}; wait for it to finish, or for its lease to expire if its worker died",
                b.build_id,
                plan.label(b.active_state.unwrap_or_default()),
                b.lease_owner.as_deref().unwrap_or("?"),
                b.lease_expires_at.map(time::format).unwrap_or_default()
            ))
            .hint(Hint::Owner),
        ));
    }
    Ok(())
}

/// A leased worker's late write: refuse it unless its attempt is still the one running
/// under its lease. This is what keeps a worker that was paused past its lease (and taken
/// over) from recording a result for an attempt that is no longer its own.
pub(super) fn check_fence(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: u8,
    verb: &str,
) -> Result<()> {
    let Some(attempt) = ctx.fence else {
        return Ok(());
    };
    let current = b.status == Status::Running
        && b.active_state == Some(state)
        && b.attempt == attempt
        && b.lease_owner.is_some()
        && b.lease_owner.as_deref() == ctx.owner;
    if current {
        return Ok(());
    }
    let id = &b.build_id;
    let now = match (b.status, b.active_state) {
        (Status::Running, Some(a)) if a == state => format!(
            "attempt {} of it is running under the lease of {}",
            b.attempt,
            b.lease_owner.as_deref().unwrap_or("nobody")
        ),
        (Status::Running, Some(a)) => format!("{} is running", plan.label(a)),
        (Status::Waiting, Some(a)) => format!(
            "{} failed at attempt {} and waits for a retry",
            plan.label(a),
            b.attempt
        ),
        (Status::Blocked, Some(a)) => format!("{} is blocked", plan.label(a)),
        (status, _) => format!(
            "the build is {status}, last completed state {}",
            b.current_state.map_or("none".into(), |s| s.to_string())
        ),
    };
    Err(Error::Fenced(format!(
        "build '{id}': cannot {verb} {} attempt {attempt}: this worker's lease is no longer current ({now}); its lease probably expired and another worker took over. Nothing was written; see `check-state {id} --history`",
        plan.label(state)
    )))
}

/// What a call does to a state's attempt: begin one, or finish it one way or the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Start,
    Complete,
    Fail,
}

impl Step {
    /// The verb, as messages say it.
    fn verb(self) -> &'static str {
        match self {
            Step::Start => "start",
            Step::Complete => "complete",
            Step::Fail => "fail",
        }
    }
}

/// How a state transition relates to the build's active attempt.
pub(super) enum Attempt {
    /// The state is running and this call finishes that attempt.
    Current(u32),
    /// This call begins attempt N (implicitly, for complete/fail without a start).
    New(u32),
}

pub(super) fn refuse_if_finished(b: &Build, verb: &str) -> Result<()> {
    let id = &b.build_id;
    match b.status {
        Status::Completed => refuse(format!(
            "build '{id}' is already completed (last state {}); nothing to {verb}: use a new build id to build again",
            b.current_state.map_or("none".into(), |s| s.to_string())
        )),
        Status::Cancelled => refuse(format!(
            "build '{id}' was cancelled; nothing to {verb}: use a new build id to build again"
        )),
        _ => Ok(()),
    }
}

pub(super) fn check_in_plan(b: &Build, plan: &Plan, state: u8) -> Result<()> {
    if plan.state(state).is_none() {
        return refuse(format!(
            "build '{}': state {state} is not in its plan '{}' (states: {}); nothing was written",
            b.build_id,
            plan.name,
            plan.ids()
        ));
    }
    Ok(())
}

/// "attempt 3 of 5" for the active state.
pub fn attempts_allowed(b: &Build, plan: &Plan, state: u8) -> u32 {
    crate::policy::max_attempts(plan.retry_for(state)).saturating_add(b.extra_attempts)
}

pub(super) fn attempt_for(
    b: &Build,
    plan: &Plan,
    state: u8,
    step: Step,
    ctx: &Ctx<'_>,
) -> Result<Attempt> {
    let id = &b.build_id;
    let verb = step.verb();
    check_in_plan(b, plan, state)?;
    refuse_if_finished(b, verb)?;
    if step != Step::Start {
        check_fence(b, plan, ctx, state, verb)?;
    }
    let label = plan.label(state);
    if let Some(active) = b.active_state {
        if active == state {
            return match b.status {
                Status::Running => {
                    check_lease(b, plan, ctx, &format!("{verb} {label}"))?;
                    Ok(if step == Step::Start {
                        Attempt::New(b.attempt + 1)
                    } else {
                        Attempt::Current(b.attempt)
                    })
                }
                Status::Waiting => match b.next_attempt_at {
                    Some(due) if due > ctx.now => refuse(
                        Refusal::new(format!(
                            "build '{id}': the retry of {label} is not due until {} (attempt {} of {}); wait, or allow it now with ",
                            time::format(due),
                            b.attempt + 1,
                            attempts_allowed(b, plan, state)
                        ))
                        .hint(Hint::verb(id, "retry", state, true))
                        .then("; nothing was written"),
                    ),
                    _ => Ok(Attempt::New(b.attempt + 1)),
                },
                Status::Blocked => refuse(
                    Refusal::new(format!(
                        "build '{id}': {label} is blocked: {}; a person can allow another attempt with ",
                        b.blocked_reason.as_deref().unwrap_or("it needs a person")
                    ))
                    .hint(Hint::verb(id, "retry", state, true))
                    .then(" or skip it with ")
                    .hint(Hint::verb(id, "skip", state, true))
                    .then("; nothing was written"),
                ),
                _ => Ok(Attempt::New(b.attempt + 1)),
            };
        }
        let (doing, what, hint) = match b.status {
            Status::Running => {
                check_lease(b, plan, ctx, &format!("{verb} {label}"))?;
                (
                    "is running",
                    "complete or fail it first (",
                    Hint::verb(id, "complete", active, false),
                )
            }
            Status::Waiting => (
                "failed and waits for a retry",
                "retry or skip it first (",
                Hint::verb(id, "skip", active, true),
            ),
            _ => (
                "is blocked",
                "retry or skip it first (",
                Hint::verb(id, "retry", active, true),
            ),
        };
        return refuse(
            Refusal::new(format!(
                "build '{id}': cannot {verb} {label}: {} {doing}; {what}",
                plan.label(active)
            ))
            .hint(hint)
            .then("); nothing was written"),
        );
    }
    match plan.next_after(b.current_state) {
        Some(next) if next.id == state => Ok(Attempt::New(1)),
        Some(next) => {
            if b.current_state.is_some_and(|c| state <= c) {
                refuse(
                    Refusal::new(format!(
                        "build '{id}': cannot {verb} {label}: that would move backwards, since {} is already completed; the next state is {} (to go back on purpose: ",
                        plan.label(b.current_state.unwrap_or_default()),
                        plan.label(next.id)
                    ))
                    .hint(Hint::Rollback { build_id: id.clone() })
                    .then("); nothing was written"),
                )
            } else {
                refuse(
                    Refusal::new(format!(
                        "build '{id}': cannot {verb} {label}: the next state is {}; complete it first (or ",
                        plan.label(next.id),
                    ))
                    .hint(Hint::verb(id, "skip", next.id, true))
                    .then("); nothing was written"),
                )
            }
        }
        None => refuse(format!(
            "build '{id}': every state of its plan is completed; nothing to {verb}"
        )),
    }
}

pub(super) fn elapsed_ms(since: Option<SystemTime>, now: SystemTime) -> Option<u64> {
    since.map(|s| {
        now.duration_since(s)
            .unwrap_or_default()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    })
}

/// Clear everything about the active attempt: the state is done with (completed or skipped)
/// or abandoned (rollback, cancel).
pub(super) fn clear_attempt(b: &mut Build) {
    b.active_state = None;
    b.attempt = 0;
    b.attempt_started_at = None;
    b.first_attempt_at = None;
    b.next_attempt_at = None;
    b.extra_attempts = 0;
    b.blocked_reason = None;
    b.lease_owner = None;
    b.lease_expires_at = None;
    b.last_error = None;
    b.last_category = None;
}

/// Mark a state done (completed or skipped): the attempt is over; the event makes the
/// state the current one ([`super::Implied`]).
pub(super) fn finish_state(b: &mut Build) {
    clear_attempt(b);
}
