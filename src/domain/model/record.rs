//! The build record: a build's summary row, its events, and the validation of what
//! names a build.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::context::Actor;
use crate::plan::Plan;
use crate::policy::Category;
use crate::{Error, Result};

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
    /// A completed state's verify command could not run to a verdict (not found, not
    /// executable, timed out, killed by a signal): nothing is known of the state's
    /// result, so it is neither drift nor a pass.
    Unverified,
    /// The outcome of an abandoned attempt that landed after it was taken over or moved
    /// past (a journaled result, see `sync-cloud`): history only.
    Late,
    /// Task results older than a cut-off (its `until`) left the history: retention
    /// (`monitor prune-tasks`). Their numbers stay unused; its `count` says how many.
    Pruned,
    /// Values a state produced (`update-state output`): its `outputs` (`crate::outputs`).
    Output,
    /// A cloud resource created, deleted, checked, claimed for cleanup or not cleaned up
    /// (`update-state resource`, `monitor gc`): its `resource` (`crate::resources`).
    Resource,
    /// A person withdrew the build's current outputs (`update-state revoke`): a bad image.
    /// The builds that consumed them are stale (their `inputs.builds`), and a build that
    /// waits for this one waits until it makes new ones.
    Revoke,
    /// A state done by reusing what an identical build did (`init-state --reuse-from`):
    /// the same inputs, hashed again for this build, and that build's current outputs of
    /// the state. Counts as a completion; its resources stay the other build's.
    Reused,
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
    Verified => "verified", Unverified => "unverified", Late => "late", Pruned => "pruned",
    Output => "output", Resource => "resource", Revoke => "revoke",
    Reused => "reused",
});

impl EventKind {
    /// Kinds that reopen completed states: the event's state is the first to run again
    /// (`None`: every state).
    pub fn reopens(self) -> bool {
        matches!(self, EventKind::Force | EventKind::Reset | EventKind::Rerun)
    }

    /// A person's decision about a build (what ends its wait for a person, in the
    /// statistics and the timeline).
    pub fn decided_by_person(self) -> bool {
        matches!(
            self,
            EventKind::Retry
                | EventKind::Skip
                | EventKind::Cancel
                | EventKind::Rollback
                | EventKind::Force
                | EventKind::Reset
        )
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
    /// an interrupt or a retry (`None` on a fail: the state is blocked); on a `pruned`
    /// event, the cut-off: task results recorded before it were removed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339::option"
    )]
    pub until: Option<SystemTime>,
    /// On a completion: what the state's inputs were (see `app::inputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<crate::manifest::Manifest>,
    /// On a `pruned` event: how many task results left the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// On an `output` event: the values its state recorded (`crate::outputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, String>>,
    /// On a `resource` event: what it says of which resource (`crate::resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<crate::resources::Op>,
    /// On an `init` event: the other builds' states the build waits for before any of
    /// its states runs (`init-state --after BUILD:STATE`: `crate::deps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
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
    pub inputs: Option<crate::manifest::Manifest>,
    /// See [`Event::count`].
    pub count: Option<u64>,
    /// See [`Event::outputs`].
    pub outputs: Option<BTreeMap<String, String>>,
    /// See [`Event::resource`].
    pub resource: Option<crate::resources::Op>,
    /// See [`Event::after`].
    pub after: Option<Vec<String>>,
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
            count: None,
            outputs: None,
            resource: None,
            after: None,
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

/// The identity a new build is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct InitRequest {
    pub build_id: String,
    pub cloud: String,
    pub image: String,
    pub plan: Plan,
    pub meta: Vec<(String, String)>,
    /// `init-state --after`: the other builds' states this build waits for.
    pub after: Vec<String>,
}

impl InitRequest {
    /// What tests start from (here and in the state crate's): build `build_id` of the
    /// default plan, cloud aws, image rhel9, no metadata (override fields with
    /// `..InitRequest::sample(id)`).
    #[doc(hidden)]
    pub fn sample(build_id: &str) -> InitRequest {
        InitRequest {
            build_id: build_id.into(),
            cloud: "aws".into(),
            image: "rhel9".into(),
            plan: Plan::default_plan(),
            meta: vec![],
            after: vec![],
        }
    }
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
        if self.after.len() > crate::deps::MAX_AFTER {
            return Err(Error::InvalidInput(format!(
                "{} --after, more than the {} a build may wait for",
                self.after.len(),
                crate::deps::MAX_AFTER
            )));
        }
        for a in &self.after {
            let parsed = crate::deps::parse_after(a)
                .map_err(|m| Error::InvalidInput(format!("--after {m}")))?;
            if parsed.build.contains('{') {
                return Err(Error::InvalidInput(format!(
                    "--after '{}': name the build itself (templates are for plans, where one plan serves many builds)",
                    echo(a)
                )));
            }
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
        if !self.after.is_empty() {
            message.push_str(&format!("; waits for {}", self.after.join(", ")));
            event.after = Some(self.after.clone());
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

/// A lease holder's name (`--owner`, `BUILDSTATE_OWNER`, the Concourse `owner` param) is
/// compared for equality and printed in one-line messages: it must say something and
/// fit on a line.
pub fn validate_owner(owner: &str) -> Result<()> {
    let ok = !owner.trim().is_empty()
        && owner.chars().count() <= 256
        && !owner.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid lease owner '{}': use 1 to 256 characters, not only spaces and no control \
             characters (--owner, BUILDSTATE_OWNER or the resource's `owner` param; unset, it \
             is USER@HOST)",
            echo(owner)
        )))
    }
}

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
