//! The build model and its transitions.
//!
//! [`apply`] is pure: given a build, its plan, a requested [`Transition`] and the time,
//! it returns the new summary row and the events to append, or refuses with a message
//! that says why and what to do. The store runs it inside one transaction, so a refused
//! transition writes nothing and an accepted one writes row and events together.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::context::Actor;
use crate::plan::Plan;
use crate::policy::Category;
use crate::redact::redact;
use crate::{time, Error, Result};

/// Where a build stands. See `docs/plan.md` for the life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, or between two states: the next state may start.
    Pending,
    /// A state is in progress.
    Running,
    /// The active state failed and a retry is scheduled (`next_attempt_at`).
    Waiting,
    /// The active state failed and needs a person (`blocked_reason`).
    Blocked,
    /// The plan's last state is completed.
    Completed,
    /// Stopped by a person.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Init,
    Start,
    Complete,
    Fail,
    Meta,
    /// The command was interrupted (SIGINT/SIGTERM); the attempt does not count.
    Interrupt,
    /// A worker took over a lease that had expired.
    Takeover,
    /// A person allowed another attempt now.
    Retry,
    /// A person marked a state done without running it.
    Skip,
    /// A person moved the build back to an earlier completed state.
    Rollback,
    /// A person stopped the build.
    Cancel,
    /// One task's result on one host (Ansible): informational, no state change.
    Task,
    /// A person marked a state and every later one to run again (`update-state force`).
    Force,
    /// A person started the build over (`update-state reset`): a new epoch.
    Reset,
    /// A completed state's inputs changed or its verify failed: it runs again.
    Rerun,
    /// A state's `requires` command failed; the state is blocked, no attempt used.
    Prerequisite,
    /// A completed state's verify command failed (`check-state --verify`).
    Drift,
    /// A completed state's verify command passed.
    Verified,
}

text_enum!(Status {
    Pending => "pending", Running => "running", Waiting => "waiting",
    Blocked => "blocked", Completed => "completed", Cancelled => "cancelled",
});
text_enum!(EventKind {
    Init => "init", Start => "start", Complete => "complete", Fail => "fail", Meta => "meta",
    Interrupt => "interrupt", Takeover => "takeover", Retry => "retry", Skip => "skip",
    Rollback => "rollback", Cancel => "cancel", Task => "task", Force => "force",
    Reset => "reset", Rerun => "rerun", Prerequisite => "prerequisite", Drift => "drift",
    Verified => "verified",
});

impl EventKind {
    /// Kinds that reopen completed states: the event's state is the first to run again
    /// (`None`: every state).
    pub fn reopens(self) -> bool {
        matches!(self, EventKind::Force | EventKind::Reset | EventKind::Rerun)
    }
}

/// The summary row of a build, derived from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub build_id: String,
    /// Fixed at init; identifies this build across machines.
    pub lineage: String,
    /// Goes up by exactly one on every write.
    pub serial: u64,
    pub cloud: String,
    pub image: String,
    pub plan_hash: String,
    /// The last state completed; `None` before the first completes.
    pub current_state: Option<u8>,
    /// The state in progress, or the one that failed.
    pub active_state: Option<u8>,
    pub status: Status,
    /// The attempt number of `active_state` (1 for its first try); 0 when none is active.
    pub attempt: u32,
    #[serde(with = "crate::time::rfc3339::option")]
    pub attempt_started_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_category: Option<Category>,
    /// When the active state's first attempt started (for a backoff `window`).
    #[serde(with = "crate::time::rfc3339::option")]
    pub first_attempt_at: Option<SystemTime>,
    /// When a scheduled retry becomes due (status `waiting`).
    #[serde(with = "crate::time::rfc3339::option")]
    pub next_attempt_at: Option<SystemTime>,
    /// Attempts granted beyond the policy's (by `retry` and by interruptions).
    pub extra_attempts: u32,
    /// Why a person is needed (status `blocked`).
    pub blocked_reason: Option<String>,
    /// Who holds the build while a state runs under `run-state`.
    pub lease_owner: Option<String>,
    #[serde(with = "crate::time::rfc3339::option")]
    pub lease_expires_at: Option<SystemTime>,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: SystemTime,
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: SystemTime,
}

/// An event as stored: one immutable row of a build's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// The build's serial after the write that appended this event.
    pub serial: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    pub kind: EventKind,
    pub state: Option<u8>,
    pub attempt: Option<u32>,
    pub message: Option<String>,
    pub category: Option<Category>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub actor: Actor,
    /// The lease holder that made the write (`--owner`, run-state's own name), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The id of the write that appended this event: one id per write, shared by its
    /// events and kept across its retries after a lost race.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
    /// The time the write set: the lease's expiry on a start, the next retry on a fail,
    /// an interrupt or a retry (`None` on a fail: the state is blocked).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339::option"
    )]
    pub until: Option<SystemTime>,
    /// On a completion: what the state's inputs were (see [`crate::inputs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<crate::inputs::Manifest>,
}

/// An event about to be appended; the store adds seq, serial, time and actor.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub state: Option<u8>,
    pub attempt: Option<u32>,
    pub message: Option<String>,
    pub category: Option<Category>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    /// When it happened, if earlier than the write (queued task results).
    pub at: Option<SystemTime>,
    /// See [`Event::until`].
    pub until: Option<SystemTime>,
    /// See [`Event::inputs`].
    pub inputs: Option<crate::inputs::Manifest>,
}

impl NewEvent {
    pub fn new(kind: EventKind, state: Option<u8>) -> NewEvent {
        NewEvent {
            kind,
            state,
            attempt: None,
            message: None,
            category: None,
            exit_code: None,
            duration_ms: None,
            at: None,
            until: None,
            inputs: None,
        }
    }
}

/// What a caller asks of a build.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Start {
        state: u8,
    },
    Complete {
        state: u8,
        /// The state's inputs as hashed for this completion, if it has any.
        inputs: Option<Box<crate::inputs::Manifest>>,
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
    Interrupt {
        state: u8,
        signal: String,
    },
    Meta {
        pairs: Vec<(String, String)>,
    },
    Retry {
        state: u8,
        reason: String,
    },
    Skip {
        state: u8,
        reason: String,
    },
    Rollback {
        to: Option<u8>,
        reason: String,
    },
    Cancel {
        reason: String,
    },
    /// Completed states run again from `from` (`None`: from the first), for the reason
    /// `why` names; history is kept.
    Reopen {
        from: Option<u8>,
        reason: String,
        why: Reopen,
    },
    /// The `requires` command of `state` failed: the state is blocked without using an
    /// attempt; `message` is the command's output (redacted when recorded).
    Unmet {
        state: u8,
        message: String,
    },
    /// Results of verify commands (`check-state --verify`); the build does not change,
    /// but a failed one makes its state stale.
    Verified {
        results: Vec<VerifyResult>,
    },
    /// Task results (Ansible), recorded for the history; the build does not change.
    /// One write however many records, so a batch costs one transaction.
    Tasks {
        records: Vec<TaskRecord>,
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

/// One task's result on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The state the task ran under, if any.
    pub state: Option<u8>,
    pub task: String,
    pub host: String,
    /// ok, changed, failed, skipped, unreachable, ignored, rescued
    pub status: String,
    pub duration_ms: Option<u64>,
    /// The module's message, for failures (redacted when recorded).
    pub message: Option<String>,
    /// When the result came in (the event's time, even if written later).
    pub at: SystemTime,
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

/// The identity a new build is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct InitRequest {
    pub build_id: String,
    pub cloud: String,
    pub image: String,
    pub plan: Plan,
    pub meta: Vec<(String, String)>,
}

impl InitRequest {
    pub fn validate(&self) -> Result<()> {
        validate_build_id(&self.build_id)?;
        for (what, v) in [("--cloud", &self.cloud), ("--image", &self.image)] {
            if v.trim().is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
                return Err(Error::InvalidInput(format!(
                    "invalid {what} '{}': give a non-empty name of at most 128 characters",
                    echo(v)
                )));
            }
        }
        for (k, _) in &self.meta {
            validate_meta_key(k)?;
        }
        Ok(())
    }

    /// The new build's first row and its init event. State 0 is recorded as done in the
    /// same write unless the plan gives it work of its own (see [`Plan::done_at_init`]).
    pub fn new_build(&self, lineage: String, now: SystemTime) -> (Build, NewEvent) {
        let init_done = self.plan.done_at_init().map(|s| s.id);
        let status = match init_done {
            Some(id) if id == self.plan.last().id => Status::Completed,
            _ => Status::Pending,
        };
        let build = Build {
            build_id: self.build_id.clone(),
            lineage,
            serial: 1,
            cloud: self.cloud.clone(),
            image: self.image.clone(),
            plan_hash: self.plan.hash(),
            current_state: init_done,
            active_state: None,
            status,
            attempt: 0,
            attempt_started_at: None,
            last_error: None,
            last_category: None,
            first_attempt_at: None,
            next_attempt_at: None,
            extra_attempts: 0,
            blocked_reason: None,
            lease_owner: None,
            lease_expires_at: None,
            created_at: now,
            updated_at: now,
        };
        let mut event = NewEvent::new(EventKind::Init, init_done);
        let mut message = format!(
            "cloud={} image={} plan={} ({} states)",
            self.cloud,
            self.image,
            self.plan.name,
            self.plan.states.len()
        );
        if let Some(id) = init_done {
            message.push_str(&format!("; {} recorded as done", self.plan.label(id)));
        }
        event.message = Some(message);
        (build, event)
    }
}

/// Build ids end up in file names and object keys, so they are kept to a safe alphabet.
pub fn validate_build_id(id: &str) -> Result<()> {
    let ok = (1..=128).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid build id '{}': use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            echo(id)
        )))
    }
}

pub use crate::redact::{echo, MAX_ECHO};

/// Metadata keys become shell variables in `resume-metadata`, so they must be identifiers.
pub fn validate_meta_key(key: &str) -> Result<()> {
    let ok = (1..=64).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid metadata key '{}': use 1 to 64 letters, digits or '_', not starting with a digit",
            echo(key)
        )))
    }
}

/// Parse `KEY=VALUE`; the value may contain '=' and anything else.
pub fn parse_meta_pair(text: &str) -> Result<(String, String)> {
    let Some((k, v)) = text.split_once('=') else {
        return Err(Error::InvalidInput(format!(
            "invalid metadata '{}': write it as KEY=VALUE",
            echo(text)
        )));
    };
    validate_meta_key(k)?;
    Ok((k.to_string(), v.to_string()))
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(Error::Refused(msg))
}

fn need_reason(reason: &str, what: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(Error::InvalidInput(format!(
            "{what} needs a reason: pass --reason TEXT (it is recorded with who did it)"
        )));
    }
    Ok(())
}

fn lease_live(b: &Build, now: SystemTime) -> bool {
    b.lease_owner.is_some() && b.lease_expires_at.is_some_and(|t| t > now)
}

/// Refuse when another live holder has the lease.
fn check_lease(b: &Build, plan: &Plan, ctx: &Ctx<'_>, verb: &str) -> Result<()> {
    if lease_live(b, ctx.now) && b.lease_owner.as_deref() != ctx.owner {
        return Err(Error::Leased(format!(
            "build '{}': cannot {verb}: {} is held by {} until {}; wait for it to finish, or for its lease to expire if its worker died (if you are that worker, pass --owner with its name)",
            b.build_id,
            plan.label(b.active_state.unwrap_or_default()),
            b.lease_owner.as_deref().unwrap_or("?"),
            b.lease_expires_at.map(time::format).unwrap_or_default()
        )));
    }
    Ok(())
}

/// A leased worker's late write: refuse it unless its attempt is still the one running
/// under its lease. This is what keeps a worker that was paused past its lease (and taken
/// over) from recording a result for an attempt that is no longer its own.
fn check_fence(b: &Build, plan: &Plan, ctx: &Ctx<'_>, state: u8, verb: &str) -> Result<()> {
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

/// How a state transition relates to the build's active attempt.
enum Attempt {
    /// The state is running and this call finishes that attempt.
    Current(u32),
    /// This call begins attempt N (implicitly, for complete/fail without a start).
    New(u32),
}

fn refuse_if_finished(b: &Build, verb: &str) -> Result<()> {
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

fn check_in_plan(b: &Build, plan: &Plan, state: u8) -> Result<()> {
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

fn attempt_for(b: &Build, plan: &Plan, state: u8, verb: &str, ctx: &Ctx<'_>) -> Result<Attempt> {
    let id = &b.build_id;
    check_in_plan(b, plan, state)?;
    refuse_if_finished(b, verb)?;
    if verb != "start" {
        check_fence(b, plan, ctx, state, verb)?;
    }
    let label = plan.label(state);
    if let Some(active) = b.active_state {
        if active == state {
            return match b.status {
                Status::Running => {
                    check_lease(b, plan, ctx, &format!("{verb} {label}"))?;
                    Ok(if verb == "start" {
                        Attempt::New(b.attempt + 1)
                    } else {
                        Attempt::Current(b.attempt)
                    })
                }
                Status::Waiting => match b.next_attempt_at {
                    Some(due) if due > ctx.now => refuse(format!(
                        "build '{id}': the retry of {label} is not due until {} (attempt {} of {}); wait, or allow it now with `update-state {id} retry {state} --reason TEXT`; nothing was written",
                        time::format(due),
                        b.attempt + 1,
                        attempts_allowed(b, plan, state)
                    )),
                    _ => Ok(Attempt::New(b.attempt + 1)),
                },
                Status::Blocked => refuse(format!(
                    "build '{id}': {label} is blocked: {}; a person can allow another attempt with `update-state {id} retry {state} --reason TEXT` or skip it with `update-state {id} skip {state} --reason TEXT`; nothing was written",
                    b.blocked_reason.as_deref().unwrap_or("it needs a person")
                )),
                _ => Ok(Attempt::New(b.attempt + 1)),
            };
        }
        let (doing, what) = match b.status {
            Status::Running => {
                check_lease(b, plan, ctx, &format!("{verb} {label}"))?;
                (
                    "is running",
                    format!("complete or fail it first (`update-state {id} complete {active}`)"),
                )
            }
            Status::Waiting => (
                "failed and waits for a retry",
                format!("retry or skip it first (`update-state {id} skip {active} --reason TEXT`)"),
            ),
            _ => (
                "is blocked",
                format!(
                    "retry or skip it first (`update-state {id} retry {active} --reason TEXT`)"
                ),
            ),
        };
        return refuse(format!(
            "build '{id}': cannot {verb} {label}: {} {doing}; {what}; nothing was written",
            plan.label(active)
        ));
    }
    match plan.next_after(b.current_state) {
        Some(next) if next.id == state => Ok(Attempt::New(1)),
        Some(next) => {
            if b.current_state.is_some_and(|c| state <= c) {
                refuse(format!(
                    "build '{id}': cannot {verb} {label}: that would move backwards, since {} is already completed; the next state is {} (to go back on purpose: `update-state {id} rollback --to STATE --reason TEXT`); nothing was written",
                    plan.label(b.current_state.unwrap_or_default()),
                    plan.label(next.id)
                ))
            } else {
                refuse(format!(
                    "build '{id}': cannot {verb} {label}: the next state is {}; complete it first (or `update-state {id} skip {} --reason TEXT`); nothing was written",
                    plan.label(next.id),
                    next.id
                ))
            }
        }
        None => refuse(format!(
            "build '{id}': every state of its plan is completed; nothing to {verb}"
        )),
    }
}

fn elapsed_ms(since: Option<SystemTime>, now: SystemTime) -> Option<u64> {
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
fn clear_attempt(b: &mut Build) {
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

/// Mark `state` done (completed or skipped).
fn finish_state(b: &mut Build, plan: &Plan, state: u8) {
    clear_attempt(b);
    b.current_state = Some(state);
    b.status = if state == plan.last().id {
        Status::Completed
    } else {
        Status::Pending
    };
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
        Transition::Reopen { from, reason, why } => {
            reopen(b, plan, ctx, *from, reason, *why, &mut c)
        }
        Transition::Unmet { state, message } => unmet(b, plan, ctx, *state, message, &mut c),
        Transition::Verified { results } => verified(b, plan, results, &mut c),
        Transition::Cancel { reason } => cancel(b, reason, &mut c),
    }?;
    Ok(c)
}

/// A new event of `kind` with its attempt and message.
fn event(
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
fn start(b: &Build, plan: &Plan, ctx: &Ctx<'_>, state: &u8, c: &mut Change) -> Result<()> {
    let now = ctx.now;
    let Attempt::New(n) = attempt_for(b, plan, *state, "start", ctx)? else {
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
    c.build.active_state = Some(*state);
    c.build.status = Status::Running;
    c.build.attempt = n;
    c.build.attempt_started_at = Some(now);
    c.build.next_attempt_at = None;
    c.build.blocked_reason = None;
    (c.build.lease_owner, c.build.lease_expires_at) = match (ctx.owner, ctx.lease_ttl) {
        (Some(owner), Some(ttl)) => (Some(owner.to_string()), Some(now + ttl)),
        _ => (None, None),
    };
    Ok(())
}

/// Finish the attempt of `state` successfully: it becomes the current state.
fn complete(b: &Build, plan: &Plan, ctx: &Ctx<'_>, state: &u8, c: &mut Change) -> Result<()> {
    let now = ctx.now;
    let (n, started) = match attempt_for(b, plan, *state, "complete", ctx)? {
        Attempt::Current(n) => (n, b.attempt_started_at),
        Attempt::New(n) => (n, None),
    };
    let mut e = event(EventKind::Complete, Some(*state), Some(n), None);
    e.duration_ms = elapsed_ms(started, now);
    c.events.push(e);
    finish_state(&mut c.build, plan, *state);
    Ok(())
}

/// Record a failed attempt, classify it, and let the retry policy schedule a retry or block.
fn fail(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: &u8,
    category: &Option<Category>,
    failure: crate::policy::Failure<'_>,
    c: &mut Change,
) -> Result<()> {
    let now = ctx.now;
    let (n, started) = match attempt_for(b, plan, *state, "fail", ctx)? {
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
    c.events.push(e);
    c.build.active_state = Some(*state);
    c.build.attempt = n;
    c.build.attempt_started_at = None;
    c.build.first_attempt_at = Some(first);
    c.build.extra_attempts = extra;
    c.build.last_error = Some(message);
    c.build.last_category = Some(category);
    c.build.lease_owner = None;
    c.build.lease_expires_at = None;
    match verdict {
        crate::policy::Verdict::RetryAt { at, .. } => {
            c.build.status = Status::Waiting;
            c.build.next_attempt_at = Some(at);
            c.build.blocked_reason = None;
            if let Some(e) = c.events.last_mut() {
                e.until = Some(at);
            }
        }
        crate::policy::Verdict::Blocked { reason, .. } => {
            c.build.status = Status::Blocked;
            c.build.next_attempt_at = None;
            c.build.blocked_reason = Some(reason);
        }
    }
    Ok(())
}

/// The running command was stopped by a signal: the attempt does not count.
fn interrupt(
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
    c.build.status = Status::Waiting;
    c.build.next_attempt_at = Some(now);
    c.build.extra_attempts = b.extra_attempts + 1;
    c.build.attempt_started_at = None;
    c.build.last_error = Some(message);
    c.build.last_category = Some(Category::Transient);
    c.build.lease_owner = None;
    c.build.lease_expires_at = None;
    Ok(())
}

/// Set metadata (redacted); the state does not change.
fn meta(pairs: &[(String, String)], c: &mut Change) -> Result<()> {
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
fn retry(
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
    c.build.status = Status::Waiting;
    c.build.next_attempt_at = Some(now);
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
fn skip(
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
    finish_state(&mut c.build, plan, *state);
    Ok(())
}

/// A person moves the build back to an earlier completed state.
fn rollback(
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
    c.build.current_state = Some(target);
    c.build.status = Status::Pending;
    Ok(())
}

/// Task results for the history; the build does not change.
fn tasks(records: &[TaskRecord], c: &mut Change) -> Result<()> {
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

/// Completed states run again from `from`: a person's force or reset, or stale inputs.
/// The build goes back to the state before `from` (history kept); a reset also starts a
/// new epoch (counted by its events).
fn reopen(
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
    let keep = plan.kept_when_reopened(from);
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
    c.build.current_state = keep;
    c.build.status = if keep == Some(plan.last().id) {
        Status::Completed
    } else {
        Status::Pending
    };
    Ok(())
}

/// A state's `requires` command failed: blocked, category prerequisite, no attempt used.
fn unmet(
    b: &Build,
    plan: &Plan,
    ctx: &Ctx<'_>,
    state: u8,
    message: &str,
    c: &mut Change,
) -> Result<()> {
    // Refused exactly where a start would be: the state must be the one to run now.
    let Attempt::New(_) = attempt_for(b, plan, state, "start", ctx)? else {
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
    c.build.active_state = Some(state);
    c.build.status = Status::Blocked;
    c.build.attempt = if same { b.attempt } else { 0 };
    if !same {
        c.build.first_attempt_at = None;
        c.build.extra_attempts = 0;
    }
    c.build.attempt_started_at = None;
    c.build.next_attempt_at = None;
    c.build.last_error = Some(message);
    c.build.last_category = Some(Category::Prerequisite);
    c.build.blocked_reason =
        Some("its prerequisite (`requires` in the plan) failed; no attempt was used".into());
    c.build.lease_owner = None;
    c.build.lease_expires_at = None;
    Ok(())
}

/// Verify results for the history; the build does not change.
fn verified(b: &Build, plan: &Plan, results: &[VerifyResult], c: &mut Change) -> Result<()> {
    if results.is_empty() {
        return Err(Error::InvalidInput("no verify results to record".into()));
    }
    for r in results {
        check_in_plan(b, plan, r.state)?;
        let kind = if r.ok {
            EventKind::Verified
        } else {
            EventKind::Drift
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
fn cancel(b: &Build, reason: &str, c: &mut Change) -> Result<()> {
    need_reason(reason, "cancel")?;
    refuse_if_finished(b, "cancel")?;
    c.events.push(event(
        EventKind::Cancel,
        b.active_state,
        None,
        Some(redact(reason).into_owned()),
    ));
    c.build.status = Status::Cancelled;
    c.build.next_attempt_at = None;
    c.build.lease_owner = None;
    c.build.lease_expires_at = None;
    c.build.attempt_started_at = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn fresh() -> (Build, Plan) {
        let plan = Plan::default_plan_with_work_at_0();
        let req = InitRequest {
            build_id: "b1".into(),
            cloud: "aws".into(),
            image: "rhel9".into(),
            plan: plan.clone(),
            meta: vec![],
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
            Err(Error::Refused(m)) => m,
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
            Err(Error::InvalidInput(_))
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
            build_id: "b".into(),
            cloud: "aws".into(),
            image: "rhel9".into(),
            plan,
            meta: vec![],
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
                matches!(apply(&b, &plan, &t, &w2), Err(Error::Leased(m)) if m.contains("held by w1")),
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
            matches!(apply(&b, &plan, &Transition::Skip { state: 0, reason: "  ".into() }, &Ctx::at(t0())), Err(Error::InvalidInput(m)) if m.contains("--reason"))
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
        assert!(refused(&b, &plan, Transition::complete(5))
            .contains("the next state is state 0 (init)"));
        b = step(&b, &plan, Transition::complete(0));
        b = step(&b, &plan, Transition::complete(5));
        assert!(refused(&b, &plan, Transition::Start { state: 0 }).contains("move backwards"));
        assert!(refused(&b, &plan, Transition::complete(5)).contains("move backwards"));
        assert!(refused(&b, &plan, Transition::Start { state: 15 })
            .contains("the next state is state 10"));
        b = step(&b, &plan, Transition::Start { state: 10 });
        assert!(refused(&b, &plan, Transition::Start { state: 15 })
            .contains("state 10 (green-image-validation) is running"));
        b = step(&b, &plan, Transition::fail(10, "x"));
        assert!(
            refused(&b, &plan, Transition::complete(15)).contains("failed and waits for a retry")
        );
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
}
