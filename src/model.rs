//! The build model and its transitions.
//!
//! [`apply`] is pure: given a build, its plan, a requested [`Transition`] and the time,
//! it returns the new summary row and the events to append, or refuses with a message
//! that says why and what to do. The store runs it inside one transaction, so a refused
//! transition writes nothing and an accepted one writes row and events together.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::context::Actor;
use crate::plan::Plan;
use crate::redact::redact;
use crate::{Error, Result};

/// Where a build stands. See `docs/plan.md` for the life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, or between two states: the next state may start.
    Pending,
    /// A state is in progress.
    Running,
    /// The active state failed.
    Failed,
    /// A retry of the failed state is scheduled.
    Waiting,
    /// Needs a person.
    Blocked,
    /// The plan's last state is completed.
    Completed,
    /// Stopped by a person.
    Cancelled,
}

/// What kind of failure a state had; it decides whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Transient,
    Persistent,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Init,
    Start,
    Complete,
    Fail,
    Meta,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok(<$t>::$v),)+
                    other => Err(Error::Corrupt(format!(
                        "unknown {} '{other}'", stringify!($t)
                    ))),
                }
            }
        }
    };
}

text_enum!(Status {
    Pending => "pending", Running => "running", Failed => "failed", Waiting => "waiting",
    Blocked => "blocked", Completed => "completed", Cancelled => "cancelled",
});
text_enum!(Category { Transient => "transient", Persistent => "persistent", Unknown => "unknown" });
text_enum!(EventKind { Init => "init", Start => "start", Complete => "complete", Fail => "fail", Meta => "meta" });

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
    },
    Fail {
        state: u8,
        message: String,
        category: Option<Category>,
        exit_code: Option<i32>,
    },
    Meta {
        pairs: Vec<(String, String)>,
    },
}

/// The outcome of an accepted transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub build: Build,
    pub events: Vec<NewEvent>,
    /// Metadata to upsert (already redacted).
    pub meta: Vec<(String, String)>,
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
                    "invalid {what} '{v}': give a non-empty name of at most 128 characters"
                )));
            }
        }
        for (k, _) in &self.meta {
            validate_meta_key(k)?;
        }
        Ok(())
    }

    /// The new build's first row and its init event.
    pub fn new_build(&self, lineage: String, now: SystemTime) -> (Build, NewEvent) {
        let build = Build {
            build_id: self.build_id.clone(),
            lineage,
            serial: 1,
            cloud: self.cloud.clone(),
            image: self.image.clone(),
            plan_hash: self.plan.hash(),
            current_state: None,
            active_state: None,
            status: Status::Pending,
            attempt: 0,
            attempt_started_at: None,
            last_error: None,
            last_category: None,
            created_at: now,
            updated_at: now,
        };
        let mut event = NewEvent::new(EventKind::Init, None);
        event.message = Some(format!(
            "cloud={} image={} plan={} ({} states)",
            self.cloud,
            self.image,
            self.plan.name,
            self.plan.states.len()
        ));
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
            id.escape_debug()
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
            key.escape_debug()
        )))
    }
}

/// Parse `KEY=VALUE`; the value may contain '=' and anything else.
pub fn parse_meta_pair(text: &str) -> Result<(String, String)> {
    let Some((k, v)) = text.split_once('=') else {
        return Err(Error::InvalidInput(format!(
            "invalid metadata '{}': write it as KEY=VALUE",
            text.escape_debug()
        )));
    };
    validate_meta_key(k)?;
    Ok((k.to_string(), v.to_string()))
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(Error::Refused(msg))
}

/// How a state transition relates to the build's active attempt.
enum Attempt {
    /// The state is running and this call finishes that attempt.
    Current(u32),
    /// This call begins attempt N (implicitly, for complete/fail without a start).
    New(u32),
}

fn attempt_for(b: &Build, plan: &Plan, state: u8, verb: &str) -> Result<Attempt> {
    let id = &b.build_id;
    if plan.state(state).is_none() {
        return refuse(format!(
            "build '{id}': state {state} is not in its plan '{}' (states: {}); nothing was written",
            plan.name,
            plan.ids()
        ));
    }
    match b.status {
        Status::Completed => {
            return refuse(format!(
                "build '{id}' is already completed (last state {}); nothing to {verb}: use a new build id to build again",
                b.current_state.map_or("none".into(), |s| s.to_string())
            ))
        }
        Status::Cancelled => {
            return refuse(format!(
                "build '{id}' was cancelled; nothing to {verb}: use a new build id to build again"
            ))
        }
        _ => {}
    }
    if let Some(active) = b.active_state {
        if active == state {
            return Ok(if b.status == Status::Running && verb != "start" {
                Attempt::Current(b.attempt)
            } else {
                Attempt::New(b.attempt + 1)
            });
        }
        let doing = if b.status == Status::Running {
            format!("{} is running", plan.label(active))
        } else {
            format!("{} has failed", plan.label(active))
        };
        let what = if b.status == Status::Running {
            format!("complete or fail it first (`update-state {id} complete {active}`)")
        } else {
            format!("retry it first (`update-state {id} start {active}`)")
        };
        return refuse(format!(
            "build '{id}': cannot {verb} {}: {doing}; {what}; nothing was written",
            plan.label(state)
        ));
    }
    match plan.next_after(b.current_state) {
        Some(next) if next.id == state => Ok(Attempt::New(1)),
        Some(next) => {
            if b.current_state.is_some_and(|c| state <= c) {
                refuse(format!(
                    "build '{id}': cannot {verb} {}: that would move backwards, since {} is already completed; the next state is {}; nothing was written",
                    plan.label(state),
                    plan.label(b.current_state.unwrap_or_default()),
                    plan.label(next.id)
                ))
            } else {
                refuse(format!(
                    "build '{id}': cannot {verb} {}: the next state is {}; complete it first; nothing was written",
                    plan.label(state),
                    plan.label(next.id)
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

/// Apply a transition to a build. Pure; see the module documentation.
pub fn apply(b: &Build, plan: &Plan, t: &Transition, now: SystemTime) -> Result<Change> {
    let mut next = b.clone();
    next.serial = b.serial + 1;
    next.updated_at = now;
    let mut events = Vec::new();
    let mut meta = Vec::new();
    match t {
        Transition::Start { state } => {
            let Attempt::New(n) = attempt_for(b, plan, *state, "start")? else {
                unreachable!("start always begins a new attempt")
            };
            let mut e = NewEvent::new(EventKind::Start, Some(*state));
            e.attempt = Some(n);
            if b.status == Status::Running && b.active_state == Some(*state) {
                e.message = Some(format!(
                    "restarted while attempt {} was still marked running",
                    b.attempt
                ));
            }
            events.push(e);
            next.active_state = Some(*state);
            next.status = Status::Running;
            next.attempt = n;
            next.attempt_started_at = Some(now);
        }
        Transition::Complete { state } => {
            let (n, started) = match attempt_for(b, plan, *state, "complete")? {
                Attempt::Current(n) => (n, b.attempt_started_at),
                Attempt::New(n) => (n, None),
            };
            let mut e = NewEvent::new(EventKind::Complete, Some(*state));
            e.attempt = Some(n);
            e.duration_ms = elapsed_ms(started, now);
            events.push(e);
            next.current_state = Some(*state);
            next.active_state = None;
            next.attempt = 0;
            next.attempt_started_at = None;
            next.last_error = None;
            next.last_category = None;
            next.status = if *state == plan.last().id {
                Status::Completed
            } else {
                Status::Pending
            };
        }
        Transition::Fail {
            state,
            message,
            category,
            exit_code,
        } => {
            let (n, started) = match attempt_for(b, plan, *state, "fail")? {
                Attempt::Current(n) => (n, b.attempt_started_at),
                Attempt::New(n) => (n, None),
            };
            let message = redact(message).into_owned();
            let mut e = NewEvent::new(EventKind::Fail, Some(*state));
            e.attempt = Some(n);
            e.message = Some(message.clone());
            e.category = *category;
            e.exit_code = *exit_code;
            e.duration_ms = elapsed_ms(started, now);
            events.push(e);
            next.active_state = Some(*state);
            next.status = Status::Failed;
            next.attempt = n;
            next.attempt_started_at = None;
            next.last_error = Some(message);
            next.last_category = *category;
        }
        Transition::Meta { pairs } => {
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
            let mut e = NewEvent::new(EventKind::Meta, None);
            e.message = Some(
                sorted
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            events.push(e);
            meta = sorted
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        }
    }
    Ok(Change {
        build: next,
        events,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn fresh() -> (Build, Plan) {
        let plan = Plan::default_plan();
        let req = InitRequest {
            build_id: "b1".into(),
            cloud: "aws".into(),
            image: "rhel9".into(),
            plan: plan.clone(),
            meta: vec![],
        };
        (req.new_build("lin".into(), t0()).0, plan)
    }

    fn step(b: &Build, plan: &Plan, t: Transition) -> Build {
        apply(b, plan, &t, t0() + Duration::from_secs(b.serial * 10))
            .unwrap_or_else(|e| panic!("{t:?}: {e}"))
            .build
    }

    fn refused(b: &Build, plan: &Plan, t: Transition) -> String {
        match apply(b, plan, &t, t0()) {
            Err(Error::Refused(m)) => m,
            other => panic!("{t:?} should be refused, got {other:?}"),
        }
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
            b = step(&b, &plan, Transition::Complete { state: s.id });
            assert_eq!(b.current_state, Some(s.id));
            assert_eq!(b.active_state, None);
        }
        assert_eq!(b.status, Status::Completed);
        assert_eq!(b.serial, 1 + 2 * plan.states.len() as u64);
    }

    #[test]
    fn failure_keeps_current_state_and_counts_attempts() {
        let (mut b, plan) = fresh();
        b = step(&b, &plan, Transition::Complete { state: 0 });
        b = step(&b, &plan, Transition::Start { state: 5 });
        let fail = Transition::Fail {
            state: 5,
            message: "mirror didn't answer password=x".into(),
            category: Some(Category::Transient),
            exit_code: Some(7),
        };
        let change = apply(&b, &plan, &fail, t0() + Duration::from_secs(90)).unwrap();
        let e = &change.events[0];
        assert_eq!(e.attempt, Some(1));
        assert_eq!(e.exit_code, Some(7));
        assert_eq!(
            e.message.as_deref(),
            Some("mirror didn't answer password=[REDACTED]")
        );
        b = change.build;
        assert_eq!(
            (b.status, b.current_state, b.active_state),
            (Status::Failed, Some(0), Some(5))
        );
        assert_eq!(
            b.last_error.as_deref(),
            Some("mirror didn't answer password=[REDACTED]")
        );
        // Failing again without a start is a new (implicit) attempt.
        b = step(&b, &plan, fail.clone());
        assert_eq!(b.attempt, 2);
        b = step(&b, &plan, Transition::Start { state: 5 });
        assert_eq!((b.attempt, b.status), (3, Status::Running));
        b = step(&b, &plan, Transition::Complete { state: 5 });
        assert_eq!(
            (b.current_state, b.last_error.clone(), b.attempt),
            (Some(5), None, 0)
        );
    }

    #[test]
    fn complete_measures_duration_from_start() {
        let (b, plan) = fresh();
        let b = apply(&b, &plan, &Transition::Start { state: 0 }, t0())
            .unwrap()
            .build;
        let c = apply(
            &b,
            &plan,
            &Transition::Complete { state: 0 },
            t0() + Duration::from_millis(1500),
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
        assert!(refused(&b, &plan, Transition::Complete { state: 5 })
            .contains("the next state is state 0 (init)"));
        b = step(&b, &plan, Transition::Complete { state: 0 });
        b = step(&b, &plan, Transition::Complete { state: 5 });
        assert!(refused(&b, &plan, Transition::Start { state: 0 }).contains("move backwards"));
        assert!(refused(&b, &plan, Transition::Complete { state: 5 }).contains("move backwards"));
        assert!(refused(&b, &plan, Transition::Start { state: 15 })
            .contains("the next state is state 10"));
        b = step(&b, &plan, Transition::Start { state: 10 });
        assert!(refused(&b, &plan, Transition::Start { state: 15 })
            .contains("state 10 (green-image-validation) is running"));
        b = step(
            &b,
            &plan,
            Transition::Fail {
                state: 10,
                message: "x".into(),
                category: None,
                exit_code: None,
            },
        );
        assert!(refused(&b, &plan, Transition::Complete { state: 15 })
            .contains("has failed; retry it first"));
    }

    #[test]
    fn completed_build_refuses_transitions_but_takes_metadata() {
        let (mut b, plan) = fresh();
        for s in plan.states.clone() {
            b = step(&b, &plan, Transition::Complete { state: s.id });
        }
        assert!(refused(&b, &plan, Transition::Start { state: 100 }).contains("already completed"));
        let c = apply(
            &b,
            &plan,
            &Transition::Meta {
                pairs: vec![("ami".into(), "ami-123".into())],
            },
            t0(),
        )
        .unwrap();
        assert_eq!(c.meta, vec![("ami".to_string(), "ami-123".to_string())]);
        assert_eq!(c.build.status, Status::Completed);
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
