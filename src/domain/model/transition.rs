//! What a caller asks of a build and the pure function that answers it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::error::{Hint, Refusal};
use crate::plan::Plan;
use crate::policy::Category;
use crate::redact::redact;
use crate::{time, Error, Result};

use super::attempts::*;
use super::*;

/// What a caller asks of a build.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transition {
    #[serde(skip)]
    Start { state: u8 },
    Complete {
        state: u8,
        /// The state's inputs as hashed for this completion, if it has any.
        inputs: Option<Box<crate::manifest::Manifest>>,
    },
    Fail {
        state: u8,
        message: String,
        /// `None`: classify from the plan's rules.
        category: Option<Category>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    /// The running command was stopped by SIGINT/SIGTERM (e.g. an aborted CI job).
    Interrupt { state: u8, signal: String },
    #[serde(skip)]
    Meta { pairs: Vec<(String, String)> },
    #[serde(skip)]
    Retry { state: u8, reason: String },
    #[serde(skip)]
    Skip { state: u8, reason: String },
    #[serde(skip)]
    Rollback { to: Option<u8>, reason: String },
    #[serde(skip)]
    Cancel { reason: String },
    /// Completed states run again from `from` (`None`: from the first), for the reason
    /// `why` names; history is kept.
    #[serde(skip)]
    Reopen {
        from: Option<u8>,
        reason: String,
        why: Reopen,
    },
    /// The `requires` command of `state` failed: the state is blocked without using an
    /// attempt; `message` is the command's output (redacted when recorded).
    #[serde(skip)]
    Unmet { state: u8, message: String },
    /// Results of verify commands (`check-state --verify`); the build does not change,
    /// but a failed one makes its state stale.
    #[serde(skip)]
    Verified { results: Vec<VerifyResult> },
    /// The outcome of an attempt that could not be recorded while it was current (the
    /// remote was away) and was taken over or moved past before it landed: kept in the
    /// history as a late result of an abandoned attempt, never as a second truth. The
    /// build does not change.
    #[serde(skip)]
    Late {
        state: u8,
        attempt: u32,
        /// What the attempt's command did, and when, as the worker journaled it.
        message: String,
    },
    /// Task results (Ansible), recorded for the history; the build does not change.
    /// One write however many records, so a batch costs one transaction.
    #[serde(skip)]
    Tasks { records: Vec<TaskRecord> },
    /// Retention: the task results recorded before `before` leave the history; one
    /// `pruned` event says how many. The build does not change.
    #[serde(skip)]
    PruneTasks {
        before: SystemTime,
        /// How many: callers pass 0, the store fills in what it counts and removes in the
        /// same transaction (a build with none is not written).
        count: u64,
    },
    /// Values a state produced (`crate::outputs`): `state`, or the active one.
    #[serde(skip)]
    Output {
        state: Option<u8>,
        pairs: Vec<(String, String)>,
        /// Resources the same state made, recorded in the same write (`add`s: a Packer
        /// manifest's artifacts).
        resources: Vec<crate::resources::Op>,
    },
    /// A resource of the ledger (`crate::resources`): created by `state` (default: the
    /// active one), deleted, checked, claimed for cleanup, or not cleaned up.
    #[serde(skip)]
    Resource {
        state: Option<u8>,
        op: crate::resources::Op,
    },
    /// A person withdraws the build's current outputs (a bad image): `crate::outputs`
    /// no longer counts them, the builds that consumed them are stale and alerted (the
    /// store finds them in the same write).
    #[serde(skip)]
    Revoke { reason: String },
    /// `state`, the next to run of a build just created, done by reusing what build
    /// `from`'s attempt `attempt` did (`init-state --reuse-from`): `inputs` as hashed for
    /// this build (equal to what that one recorded), and its current outputs of it.
    #[serde(skip)]
    Reuse {
        state: u8,
        from: String,
        attempt: Option<u32>,
        /// Why it may be reused, in words (when and by whom it completed there).
        note: String,
        inputs: Option<Box<crate::manifest::Manifest>>,
        outputs: BTreeMap<String, String>,
    },
}

/// Why completed states run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reopen {
    /// A person asked (`update-state force`).
    Force,
    /// A person started the build over (`update-state reset`).
    Reset,
    /// Inputs changed or a verify failed (the reason says which).
    Stale,
}

/// One verify command's result.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyResult {
    pub state: u8,
    pub ok: bool,
    /// Whether the command ran to a verdict: `false` when it could not be run or did not
    /// finish (exit 126 or 127, a timeout, a signal), which says nothing of the state.
    pub ran: bool,
    /// The number of the state's last completion or passed verify before this one: a
    /// drift alerts once per such number (a second cron run that finds the same drift
    /// does not alert again; a drift after a pass does).
    pub since: u64,
    /// Its output (the tail, redacted when recorded), or a note of success.
    pub message: String,
    pub duration_ms: u64,
}

impl Transition {
    /// A completion without recorded inputs.
    pub fn complete(state: u8) -> Transition {
        Transition::Complete {
            state,
            inputs: None,
        }
    }

    /// A failure with only a message; the category comes from the plan's rules.
    pub fn fail(state: u8, message: impl Into<String>) -> Transition {
        Transition::Fail {
            state,
            message: message.into(),
            category: None,
            exit_code: None,
            signal: None,
            timed_out: false,
        }
    }
}

/// When a transition happens and who asks: the clock, randomness and identity come in
/// from outside so that [`apply`] stays pure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ctx<'a> {
    pub now: SystemTime,
    /// A draw in [0, 1) for backoff jitter.
    pub jitter: f64,
    /// The lease holder making the call (run-state), if any.
    pub owner: Option<&'a str>,
    /// On `start`, take the lease for this long (needs `owner`).
    pub lease_ttl: Option<Duration>,
    /// The fencing token of a leased worker finishing its attempt: complete, fail and
    /// interrupt are refused ([`Error::Fenced`]) unless the build still runs this attempt
    /// under `owner`'s lease. Without it (a person's update-state) they apply to whatever
    /// attempt is current, subject to the lease check.
    pub fence: Option<u32>,
    /// The id recorded with this write's events ([`Event::write_id`]); the store makes
    /// one up when none is given.
    pub write_id: Option<&'a str>,
    /// When what this write records happened, if that was earlier than the write: a
    /// journaled outcome landing after a remote outage is stamped with the time its
    /// command ended, not the time it finally landed. `None`: now.
    pub happened: Option<SystemTime>,
}

impl Ctx<'static> {
    /// The real clock and a random jitter draw.
    pub fn live() -> Ctx<'static> {
        Ctx {
            jitter: random_unit(),
            ..Ctx::at(SystemTime::now())
        }
    }

    /// At `now`, with no lease and a jitter draw of one half.
    pub fn at(now: SystemTime) -> Ctx<'static> {
        Ctx {
            now,
            jitter: 0.5,
            owner: None,
            lease_ttl: None,
            fence: None,
            write_id: None,
            happened: None,
        }
    }
}

/// The outcome of an accepted transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub build: Build,
    pub events: Vec<NewEvent>,
    /// Metadata to upsert (already redacted).
    pub meta: Vec<(String, String)>,
}

/// A uniform draw in [0, 1) from the low 53 random bits of a v4 UUID (which has 122).
pub fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() & ((1u128 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

pub(super) fn refuse<T>(msg: impl Into<Refusal>) -> Result<T> {
    Err(Error::Refused(msg.into()))
}

pub(super) fn need_reason(reason: &str, what: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(Error::NeedsReason(
            Refusal::new(format!("{what} needs a reason: "))
                .hint(Hint::Reason)
                .then(" (it is recorded with who did it)"),
        ));
    }
    Ok(())
}
/// A `start` repeated by the worker that holds the state's live lease (a retried
/// pipeline step, a re-run script): nothing to do. The store answers with the build as
/// it is and writes nothing: no new attempt, no event, and no takeover that did not
/// happen.
pub fn is_repeated_start(b: &Build, t: &Transition, ctx: &Ctx<'_>) -> bool {
    matches!(t, Transition::Start { state } if b.active_state == Some(*state))
        && b.status == Status::Running
        && ctx.owner.is_some()
        && b.lease_owner.as_deref() == ctx.owner
        && lease_live(b, ctx.now)
}

/// Apply a transition to a build. Pure; see the module documentation.
pub fn apply(b: &Build, plan: &Plan, t: &Transition, ctx: &Ctx<'_>) -> Result<Change> {
    if let Some(owner) = ctx.owner {
        validate_owner(owner)?;
    }
    let mut next = b.clone();
    next.serial = b.serial + 1;
    next.updated_at = ctx.now;
    let mut c = Change {
        build: next,
        events: Vec::new(),
        meta: Vec::new(),
    };
    match t {
        Transition::Start { state } => start(b, plan, ctx, state, &mut c),
        Transition::Complete { state, inputs } => {
            complete(b, plan, ctx, state, &mut c)?;
            if let Some(e) = c.events.last_mut() {
                e.inputs = inputs.as_deref().cloned();
            }
            Ok(())
        }
        Transition::Fail {
            state,
            message,
            category,
            exit_code,
            signal,
            timed_out,
        } => {
            let failure = crate::policy::Failure {
                exit_code: *exit_code,
                signal: *signal,
                timed_out: *timed_out,
                text: message,
            };
            fail(b, plan, ctx, state, category, failure, &mut c)
        }
        Transition::Interrupt { state, signal } => interrupt(b, plan, ctx, state, signal, &mut c),
        Transition::Meta { pairs } => meta(pairs, &mut c),
        Transition::Retry { state, reason } => retry(b, plan, ctx, state, reason, &mut c),
        Transition::Skip { state, reason } => skip(b, plan, ctx, state, reason, &mut c),
        Transition::Rollback { to, reason } => rollback(b, plan, ctx, to, reason, &mut c),
        Transition::Tasks { records } => tasks(records, &mut c),
        Transition::Late {
            state,
            attempt,
            message,
        } => {
            check_in_plan(b, plan, *state)?;
            c.events.push(event(
                EventKind::Late,
                Some(*state),
                Some(*attempt),
                Some(redact(message).into_owned()),
            ));
            Ok(())
        }
        Transition::PruneTasks { before, count } => pruned(*before, *count, &mut c),
        Transition::Reopen { from, reason, why } => {
            reopen(b, plan, ctx, *from, reason, *why, &mut c)
        }
        Transition::Unmet { state, message } => unmet(b, plan, ctx, *state, message, &mut c),
        Transition::Verified { results } => verified(b, plan, results, &mut c),
        Transition::Cancel { reason } => cancel(b, reason, &mut c),
        Transition::Output {
            state,
            pairs,
            resources,
        } => output(b, plan, ctx, *state, pairs, resources, &mut c),
        Transition::Resource { state, op } => resource(b, plan, ctx, *state, op, &mut c),
        Transition::Reuse {
            state,
            from,
            attempt,
            note,
            inputs,
            outputs,
        } => {
            check_in_plan(b, plan, *state)?;
            let next = plan
                .states
                .iter()
                .find(|s| b.current_state.is_none_or(|c| s.id > c))
                .map(|s| s.id);
            if b.status != Status::Pending || b.active_state.is_some() || next != Some(*state) {
                return refuse(format!(
                    "build '{}': {} can be reused only as the next state of a build that has not run it (the build is {}); nothing was written",
                    b.build_id,
                    plan.label(*state),
                    b.status
                ));
            }
            let mut e = event(
                EventKind::Reused,
                Some(*state),
                *attempt,
                Some(redact(&format!("reused from {from}: {note}")).into_owned()),
            );
            e.inputs = inputs.as_deref().cloned();
            if !outputs.is_empty() {
                let pairs: Vec<(String, String)> = outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                crate::outputs::validate(&pairs)?;
                e.outputs = Some(outputs.clone());
            }
            c.events.push(e);
            Ok(())
        }
        Transition::Revoke { reason } => {
            need_reason(reason, "revoke")?;
            c.events.push(event(
                EventKind::Revoke,
                None,
                None,
                Some(redact(reason).into_owned()),
            ));
            Ok(())
        }
    }?;
    // The summary's current and active state, status, attempt, next retry and lease are
    // what the new events say, by the fold snapshot validation replays.
    let mut implied = Implied::of(b);
    for e in &c.events {
        implied
            .fold(plan, &Facts::new(e, ctx.owner))
            .map_err(|why| Error::Corrupt(format!("build '{}': a new event {why}", b.build_id)))?;
    }
    implied.write_to(&mut c.build);
    Ok(c)
}

/// A new event of `kind` with its attempt and message.
pub(super) fn event(
    kind: EventKind,
    state: Option<u8>,
    attempt: Option<u32>,
    message: Option<String>,
) -> NewEvent {
    let mut e = NewEvent::new(kind, state);
    e.attempt = attempt;
    e.message = message;
    e
}

/// Begin a new attempt of `state`, taking the lease when `ctx` asks for one.
pub(super) fn start(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: &u8,
    c: &mut Change,
) -> Result<()> {
    let now = ctx.now;
    let Attempt::New(n) = attempt_for(b, plan, *state, Step::Start, ctx)? else {
        unreachable!("start always begins a new attempt")
    };
    let same = b.active_state == Some(*state);
    let mut note = None;
    if same && b.status == Status::Running {
        if b.lease_owner.is_some() {
            c.events.push(event(
                EventKind::Takeover,
                Some(*state),
                Some(b.attempt),
                Some(format!(
                    "the lease of {} expired at {}; attempt {} is abandoned",
                    b.lease_owner.as_deref().unwrap_or("?"),
                    b.lease_expires_at.map(time::format).unwrap_or_default(),
                    b.attempt
                )),
            ));
        } else {
            note = Some(format!(
                "restarted while attempt {} was still marked running",
                b.attempt
            ));
        }
    }
    let mut e = event(EventKind::Start, Some(*state), Some(n), note);
    if let (Some(_), Some(ttl)) = (ctx.owner, ctx.lease_ttl) {
        e.until = Some(now + ttl);
    }
    c.events.push(e);
    if !same {
        c.build.first_attempt_at = Some(now);
        c.build.extra_attempts = 0;
    }
    c.build.attempt_started_at = Some(now);
    c.build.blocked_reason = None;
    Ok(())
}

/// Finish the attempt of `state` successfully: it becomes the current state.
pub(super) fn complete(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: &u8,
    c: &mut Change,
) -> Result<()> {
    let now = ctx.now;
    let (n, started) = match attempt_for(b, plan, *state, Step::Complete, ctx)? {
        Attempt::Current(n) => (n, b.attempt_started_at),
        Attempt::New(n) => (n, None),
    };
    let mut e = event(EventKind::Complete, Some(*state), Some(n), None);
    e.duration_ms = elapsed_ms(started, now);
    c.events.push(e);
    finish_state(&mut c.build);
    Ok(())
}

/// Record a failed attempt, classify it, and let the retry policy schedule a retry or block.
pub(super) fn fail(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: &u8,
    category: &Option<Category>,
    failure: crate::policy::Failure<'_>,
    c: &mut Change,
) -> Result<()> {
    let now = ctx.now;
    let (n, started) = match attempt_for(b, plan, *state, Step::Fail, ctx)? {
        Attempt::Current(n) => (n, b.attempt_started_at),
        Attempt::New(n) => (n, None),
    };
    let same = b.active_state == Some(*state);
    let first = if same { b.first_attempt_at } else { None }
        .or(started)
        .unwrap_or(now);
    let extra = if same { b.extra_attempts } else { 0 };
    let message = redact(failure.text).into_owned();
    let category = category.unwrap_or_else(|| {
        crate::policy::classify(
            &plan.classify_rules(*state),
            &crate::policy::Failure {
                text: &message,
                ..failure
            },
        )
    });
    let verdict = crate::policy::after_failure(
        plan.retry_for(*state),
        category,
        n,
        extra,
        Some(first),
        now,
        ctx.jitter,
    );
    let mut e = event(
        EventKind::Fail,
        Some(*state),
        Some(n),
        Some(message.clone()),
    );
    e.category = Some(category);
    e.exit_code = failure.exit_code;
    e.duration_ms = elapsed_ms(started, now);
    c.build.attempt_started_at = None;
    c.build.first_attempt_at = Some(first);
    c.build.extra_attempts = extra;
    c.build.last_error = Some(message);
    c.build.last_category = Some(category);
    // A retry's time makes the failure a wait; without one it blocks.
    match verdict {
        crate::policy::Verdict::RetryAt { at, .. } => {
            e.until = Some(at);
            c.build.blocked_reason = None;
        }
        crate::policy::Verdict::Blocked { reason, .. } => {
            c.build.blocked_reason = Some(reason);
        }
    }
    c.events.push(e);
    Ok(())
}

/// The running command was stopped by a signal: the attempt does not count.
pub(super) fn interrupt(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: &u8,
    signal: &str,
    c: &mut Change,
) -> Result<()> {
    check_fence(b, plan, ctx, *state, "record an interruption of")?;
    let now = ctx.now;
    if b.status != Status::Running || b.active_state != Some(*state) {
        return refuse(format!(
            "build '{}': {} is not running; nothing to interrupt",
            b.build_id,
            plan.label(*state)
        ));
    }
    check_lease(b, plan, ctx, "record an interruption")?;
    let message = format!("interrupted by {signal}");
    let mut e = event(
        EventKind::Interrupt,
        Some(*state),
        Some(b.attempt),
        Some(message.clone()),
    );
    e.duration_ms = elapsed_ms(b.attempt_started_at, now);
    e.until = Some(now);
    c.events.push(e);
    // An interrupted attempt is not the command's fault: it does not use up one
    // of the policy's attempts, and it may be retried at once.
    c.build.extra_attempts = b.extra_attempts + 1;
    c.build.attempt_started_at = None;
    c.build.last_error = Some(message);
    c.build.last_category = Some(Category::Transient);
    Ok(())
}

/// Set metadata (redacted); the state does not change.
pub(super) fn meta(pairs: &[(String, String)], c: &mut Change) -> Result<()> {
    if pairs.is_empty() {
        return Err(Error::InvalidInput(
            "no metadata given: pass one or more KEY=VALUE".into(),
        ));
    }
    let mut sorted: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in pairs {
        validate_meta_key(k)?;
        sorted.insert(k, redact(v).into_owned());
    }
    let text = sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    c.events
        .push(event(EventKind::Meta, None, None, Some(text)));
    c.meta = sorted
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok(())
}

/// A person allows one more attempt of a waiting or blocked state, now.
pub(super) fn retry(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: &u8,
    reason: &str,
    c: &mut Change,
) -> Result<()> {
    let now = ctx.now;
    need_reason(reason, "retry")?;
    check_in_plan(b, plan, *state)?;
    refuse_if_finished(b, "retry")?;
    let failed = matches!(b.status, Status::Waiting | Status::Blocked);
    if !failed || b.active_state != Some(*state) {
        return refuse(format!(
            "build '{}': {} has not failed; nothing to retry (status {}{}); nothing was written",
            b.build_id,
            plan.label(*state),
            b.status,
            b.active_state
                .map(|a| format!(", active {}", plan.label(a)))
                .unwrap_or_default()
        ));
    }
    // Exactly one more attempt, even when the policy's are used up.
    let policy_max = crate::policy::max_attempts(plan.retry_for(*state));
    c.build.extra_attempts = b
        .extra_attempts
        .max((b.attempt + 1).saturating_sub(policy_max));
    c.build.blocked_reason = None;
    let mut e = event(
        EventKind::Retry,
        Some(*state),
        Some(b.attempt + 1),
        Some(redact(reason).into_owned()),
    );
    e.until = Some(now);
    c.events.push(e);
    Ok(())
}

/// A person marks the next (or the failed) state done without running it.
pub(super) fn skip(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: &u8,
    reason: &str,
    c: &mut Change,
) -> Result<()> {
    need_reason(reason, "skip")?;
    check_in_plan(b, plan, *state)?;
    refuse_if_finished(b, "skip")?;
    let ok = match b.active_state {
        Some(a) if a == *state => {
            if b.status == Status::Running {
                check_lease(b, plan, ctx, &format!("skip {}", plan.label(*state)))?;
                return refuse(format!(
                    "build '{}': {} is running; fail it first, then skip it; nothing was written",
                    b.build_id,
                    plan.label(*state)
                ));
            }
            true
        }
        Some(_) => false,
        None => plan
            .next_after(b.current_state)
            .is_some_and(|n| n.id == *state),
    };
    if !ok {
        let expected = b
            .active_state
            .or(plan.next_after(b.current_state).map(|n| n.id))
            .map(|s| plan.label(s))
            .unwrap_or_else(|| "none".into());
        return refuse(format!(
                "build '{}': cannot skip {}: only the next or the failed state can be skipped, which is {expected}; nothing was written",
                b.build_id,
                plan.label(*state)
            ));
    }
    c.events.push(event(
        EventKind::Skip,
        Some(*state),
        None,
        Some(redact(reason).into_owned()),
    ));
    finish_state(&mut c.build);
    Ok(())
}

/// A person moves the build back to an earlier completed state.
pub(super) fn rollback(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    to: &Option<u8>,
    reason: &str,
    c: &mut Change,
) -> Result<()> {
    need_reason(reason, "rollback")?;
    if b.status == Status::Cancelled {
        refuse_if_finished(b, "roll back")?;
    }
    if b.status == Status::Running {
        check_lease(b, plan, ctx, "roll back")?;
        return refuse(format!(
            "build '{}': cannot roll back while {} is running; fail it first; nothing was written",
            b.build_id,
            plan.label(b.active_state.unwrap_or_default())
        ));
    }
    let Some(current) = b.current_state else {
        return refuse(format!(
            "build '{}': no state is completed yet; nothing to roll back",
            b.build_id
        ));
    };
    let target = match to {
            Some(t) => {
                check_in_plan(b, plan, *t)?;
                if *t >= current {
                    return refuse(format!(
                        "build '{}': cannot roll back to {}: it is not before the last completed state, {}; nothing was written",
                        b.build_id,
                        plan.label(*t),
                        plan.label(current)
                    ));
                }
                *t
            }
            None => match plan.previous(current) {
                Some(p) => p.id,
                None => {
                    return refuse(format!(
                        "build '{}': cannot roll back past {}: it is the plan's first state; nothing was written",
                        b.build_id,
                        plan.label(current)
                    ))
                }
            },
        };
    c.events.push(event(
        EventKind::Rollback,
        Some(target),
        None,
        Some(format!("from state {current}: {}", redact(reason))),
    ));
    clear_attempt(&mut c.build);
    Ok(())
}

/// Task results for the history; the build does not change.
pub(super) fn tasks(records: &[TaskRecord], c: &mut Change) -> Result<()> {
    if records.is_empty() {
        return Err(Error::InvalidInput("no task results to record".into()));
    }
    for r in records {
        let mut text = format!("{} on {}: {}", r.status, r.host, r.task);
        if let Some(m) = r.message.as_deref().filter(|m| !m.trim().is_empty()) {
            text.push_str(": ");
            text.push_str(m);
        }
        let mut e = event(
            EventKind::Task,
            r.state,
            None,
            Some(redact(&text).into_owned()),
        );
        e.duration_ms = r.duration_ms;
        e.at = Some(r.at);
        c.events.push(e);
    }
    Ok(())
}

/// Retention of task results: the event that says how many left and the cut-off.
pub(super) fn pruned(before: SystemTime, count: u64, c: &mut Change) -> Result<()> {
    if count == 0 {
        return Err(Error::InvalidInput("no task results to prune".into()));
    }
    let mut e = event(
        EventKind::Pruned,
        None,
        None,
        Some(format!(
            "{count} {PRUNED_SUFFIX} {} removed (retention)",
            time::format(before)
        )),
    );
    e.until = Some(before);
    e.count = Some(count);
    c.events.push(e);
    Ok(())
}

const PRUNED_SUFFIX: &str = "task result(s) recorded before";

/// How many task results a `pruned` event written before counts were typed (schema 10,
/// snapshot version 5) says it removed, read from its message: for reading old
/// snapshots only (the database's migration reads old rows the same way).
pub fn legacy_pruned_count(message: &str) -> Option<u64> {
    let (n, rest) = message.split_once(' ')?;
    rest.starts_with(PRUNED_SUFFIX)
        .then(|| n.parse().ok())
        .flatten()
}

/// Completed states run again from `from`: a person's force or reset, or stale inputs.
/// The build goes back to the state before `from` (history kept); a reset also starts a
/// new epoch (counted by its events).
pub(super) fn reopen(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    from: Option<u8>,
    reason: &str,
    why: Reopen,
    c: &mut Change,
) -> Result<()> {
    let (kind, verb) = match why {
        Reopen::Force => (EventKind::Force, "force"),
        Reopen::Reset => (EventKind::Reset, "reset"),
        Reopen::Stale => (EventKind::Rerun, "rerun"),
    };
    need_reason(reason, verb)?;
    let id = &b.build_id;
    if b.status == Status::Cancelled {
        refuse_if_finished(b, verb)?;
    }
    if b.status == Status::Running {
        check_lease(b, plan, ctx, verb)?;
        return refuse(format!(
            "build '{id}': cannot {verb} while {} is running; wait for it, or fail it first; nothing was written",
            plan.label(b.active_state.unwrap_or_default())
        ));
    }
    let first = plan.first().id;
    let from_state = from.unwrap_or(first);
    check_in_plan(b, plan, from_state)?;
    let reached = b.current_state.max(b.active_state);
    if from.is_some() && reached.is_none_or(|r| from_state > r) {
        let next = plan.next_after(b.current_state).map(|n| n.id);
        return refuse(format!(
            "build '{id}': {} has not run yet (the next state is {}); it will run anyway, nothing to {verb}; nothing was written",
            plan.label(from_state),
            next.map_or("none".into(), |n| plan.label(n))
        ));
    }
    let event_state = if from.is_none() {
        None
    } else {
        Some(from_state)
    };
    c.events.push(event(
        kind,
        event_state,
        None,
        Some(redact(reason).into_owned()),
    ));
    clear_attempt(&mut c.build);
    Ok(())
}

/// A state's `requires` command failed: blocked, category prerequisite, no attempt used.
pub(super) fn unmet(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: u8,
    message: &str,
    c: &mut Change,
) -> Result<()> {
    // Refused exactly where a start would be: the state must be the one to run now.
    let Attempt::New(_) = attempt_for(b, plan, state, Step::Start, ctx)? else {
        unreachable!("start always begins a new attempt")
    };
    let same = b.active_state == Some(state);
    let message = redact(message).into_owned();
    let mut e = event(
        EventKind::Prerequisite,
        Some(state),
        None,
        Some(message.clone()),
    );
    e.category = Some(Category::Prerequisite);
    c.events.push(e);
    if !same {
        c.build.first_attempt_at = None;
        c.build.extra_attempts = 0;
    }
    c.build.attempt_started_at = None;
    c.build.last_error = Some(message);
    c.build.last_category = Some(Category::Prerequisite);
    c.build.blocked_reason =
        Some("its prerequisite (`requires` in the plan) failed; no attempt was used".into());
    Ok(())
}

/// Verify results for the history; the build does not change.
pub(super) fn verified(
    b: &Build,
    plan: &Plan,
    results: &[VerifyResult],
    c: &mut Change,
) -> Result<()> {
    if results.is_empty() {
        return Err(Error::InvalidInput("no verify results to record".into()));
    }
    for r in results {
        check_in_plan(b, plan, r.state)?;
        let kind = match (r.ok, r.ran) {
            (true, _) => EventKind::Verified,
            (false, true) => EventKind::Drift,
            (false, false) => EventKind::Unverified,
        };
        let mut e = event(
            kind,
            Some(r.state),
            None,
            Some(redact(&r.message).into_owned()),
        );
        e.duration_ms = Some(r.duration_ms);
        c.events.push(e);
    }
    Ok(())
}

/// A person stops the build for good.
pub(super) fn cancel(b: &Build, reason: &str, c: &mut Change) -> Result<()> {
    need_reason(reason, "cancel")?;
    refuse_if_finished(b, "cancel")?;
    c.events.push(event(
        EventKind::Cancel,
        b.active_state,
        None,
        Some(redact(reason).into_owned()),
    ));
    c.build.attempt_started_at = None;
    Ok(())
}

/// The state what is recorded (outputs, a resource) belongs to: `state`, or the active
/// one; in the plan, of a build not cancelled, and one that runs or ran. With the attempt
/// running it, if one does (`None`: recorded for a state that ran). `belongs` completes
/// "name the state ..."; `what` names the records.
fn producer(
    b: &Build,
    plan: &Plan,
    state: Option<u8>,
    belongs: &str,
    what: &str,
) -> Result<(u8, Option<u32>)> {
    let id = &b.build_id;
    let Some(s) = state.or(b.active_state) else {
        return refuse(format!(
            "build '{id}': no state is active (status {}): name the state {belongs}; nothing was written",
            b.status
        ));
    };
    check_in_plan(b, plan, s)?;
    if b.status == Status::Cancelled {
        refuse_if_finished(b, &format!("record {what} for"))?;
    }
    let ran = b.active_state == Some(s) || b.current_state.is_some_and(|cur| s <= cur);
    if !ran {
        return refuse(format!(
            "build '{id}': {} has not run ({}): {what} belong to a state that runs or ran; nothing was written",
            plan.label(s),
            b.current_state.map_or("no state has completed".into(), |c| format!("the build is at {}", plan.label(c)))
        ));
    }
    let running = b.status == Status::Running && b.active_state == Some(s);
    Ok((s, running.then_some(b.attempt)))
}

/// Outputs of `state` (default: the active one): a state that is running or has run,
/// under its lease when one lives, fenced when the writer names its attempt.
pub(super) fn output(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: Option<u8>,
    pairs: &[(String, String)],
    resources: &[crate::resources::Op],
    c: &mut Change,
) -> Result<()> {
    crate::outputs::validate(pairs)?;
    let (s, attempt) = producer(b, plan, state, "the outputs belong to", "outputs")?;
    check_lease(b, plan, ctx, "record outputs")?;
    check_fence(b, plan, ctx, s, "record outputs of")?;
    let outputs: BTreeMap<String, String> = pairs.iter().cloned().collect();
    let summary = outputs
        .iter()
        .map(|(k, v)| {
            let shown: String = v.chars().take(80).collect();
            if shown.len() < v.len() {
                format!("{k}={shown}... ({} bytes)", v.len())
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut e = event(EventKind::Output, Some(s), attempt, Some(summary));
    e.outputs = Some(outputs);
    c.events.push(e);
    for op in resources {
        if !matches!(op, crate::resources::Op::Add { .. }) {
            return Err(Error::InvalidInput(
                "only resources created are recorded with outputs".into(),
            ));
        }
        resource(b, plan, ctx, Some(s), op, c)?;
    }
    Ok(())
}

/// A resource of the ledger: a creation belongs to a state that runs or ran, fenced when
/// the writer names its attempt; a claim (`monitor gc`) is refused under a live lease.
pub(super) fn resource(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: Option<u8>,
    op: &crate::resources::Op,
    c: &mut Change,
) -> Result<()> {
    op.validate()?;
    let mut e = event(
        EventKind::Resource,
        None,
        None,
        Some(crate::resources::summary(op)),
    );
    if let crate::resources::Op::Add { .. } = op {
        let (s, attempt) = producer(b, plan, state, "that created the resource", "resources")?;
        // No lease check: a resource that exists is recorded whoever says so (an
        // Ansible task beside the callback that holds the lease, a person), since
        // refusing would lose track of something that costs money. A writer that names
        // its attempt is fenced.
        check_fence(b, plan, ctx, s, "record resources of")?;
        e.state = Some(s);
        e.attempt = attempt;
    } else if matches!(op, crate::resources::Op::Claim { .. }) {
        // A collector never cleans up under a live lease; a deletion, a check or a
        // failed cleanup is a fact anyone may record.
        check_lease(b, plan, ctx, "claim a cleanup")?;
    }
    e.resource = Some(op.clone());
    c.events.push(e);
    Ok(())
}
