//! What a build made in the cloud: a ledger of resources (`update-state BUILD resource
//! add TYPE ID`), as `resource` events, folded into each resource's status, and which of
//! them nobody will use any more (orphans, for `monitor gc`).
//!
//! A resource belongs to the attempt that registered it. It is an orphan when that
//! attempt was taken over, when its state was forced, rerun, rolled back past or reset,
//! when its build was cancelled, or when its build has been failed, blocked or idle
//! longer than a window. A resource of a build whose lease lives is never an orphan.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::model::{echo, validate_meta_key, Build, Event, EventKind, Status};
use crate::{Error, Result};

/// How long a failed, blocked or abandoned build keeps its resources unless told
/// otherwise (`monitor gc --older-than`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The longest type, id or property value (a cloud's ARN fits many times over).
pub const MAX_TEXT: usize = 4096;
/// The longest cleanup or check command.
pub const MAX_COMMAND: usize = 16 * 1024;
/// The most properties one resource carries.
pub const MAX_PROPS: usize = 64;

/// What one `resource` event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// A resource was created (by the event's state and attempt).
    Add {
        #[serde(rename = "type")]
        rtype: String,
        id: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        props: BTreeMap<String, String>,
        /// What deletes it (`sh -c`, with the resource in its environment).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cleanup: Option<String>,
        /// What tells whether it is still there (exit 0: present, else missing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check: Option<String>,
    },
    /// It is gone: deleted by its cleanup (`monitor gc`, `cancel --cleanup`) or recorded
    /// as deleted by whoever deleted it.
    Delete {
        #[serde(rename = "type")]
        rtype: String,
        id: String,
    },
    /// Its check ran: it is there, or it is not.
    Check {
        #[serde(rename = "type")]
        rtype: String,
        id: String,
        present: bool,
    },
    /// A collector claimed its cleanup until `until`: another collector leaves it alone
    /// meanwhile (two cron hosts never run one cleanup twice).
    Claim {
        #[serde(rename = "type")]
        rtype: String,
        id: String,
        #[serde(with = "crate::time::rfc3339")]
        until: SystemTime,
    },
    /// Its cleanup failed (every try of one collection).
    CleanupFailed {
        #[serde(rename = "type")]
        rtype: String,
        id: String,
        /// How: the end of its output, redacted.
        message: String,
    },
}

impl Op {
    /// The resource it is about: (type, id).
    pub fn key(&self) -> (&str, &str) {
        match self {
            Op::Add { rtype, id, .. }
            | Op::Delete { rtype, id }
            | Op::Check { rtype, id, .. }
            | Op::Claim { rtype, id, .. }
            | Op::CleanupFailed { rtype, id, .. } => (rtype, id),
        }
    }

    /// Check what a writer (or a snapshot) gives: type and id are printable text of at
    /// most [`MAX_TEXT`] bytes, property keys as metadata keys, commands at most
    /// [`MAX_COMMAND`] bytes, and nothing that looks like a secret (it would reach the
    /// snapshot, the report and the cleanup's log).
    pub fn validate(&self) -> Result<()> {
        let (rtype, id) = self.key();
        text("resource type", rtype)?;
        text("resource id", id)?;
        if let Op::Add {
            props,
            cleanup,
            check,
            ..
        } = self
        {
            if props.len() > MAX_PROPS {
                return Err(Error::InvalidInput(format!(
                    "{} properties, more than the {MAX_PROPS} a resource may carry",
                    props.len()
                )));
            }
            for (k, v) in props {
                validate_meta_key(k).map_err(|_| {
                    Error::InvalidInput(format!(
                        "invalid property key '{}': use 1 to 64 letters, digits or '_', not starting with a digit (it becomes BUILDSTATE_RESOURCE_PROP_<KEY>)",
                        echo(k)
                    ))
                })?;
                text(&format!("property '{k}'"), v)?;
            }
            for (what, cmd) in [("--cleanup", cleanup), ("--check", check)] {
                if let Some(cmd) = cmd {
                    if cmd.trim().is_empty() || cmd.len() > MAX_COMMAND || cmd.contains('\0') {
                        return Err(Error::InvalidInput(format!(
                            "{what}: give a shell command of 1 to {MAX_COMMAND} bytes without NUL"
                        )));
                    }
                    no_secret(what, cmd)?;
                }
            }
        }
        Ok(())
    }
}

fn text(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "invalid {what} '{}': give 1 to {MAX_TEXT} bytes of text without control characters",
            echo(value)
        )));
    }
    no_secret(what, value)
}

fn no_secret(what: &str, value: &str) -> Result<()> {
    if crate::redact::redact(value) != value {
        return Err(Error::InvalidInput(format!(
            "{what} looks like it holds a secret (a redaction rule matches it): the ledger travels in snapshots and reports; have the command read the secret from where it is kept (an environment variable, a secret manager)"
        )));
    }
    Ok(())
}

/// The event kinds [`ledger`] and [`judge`] read (the store reads just these).
pub const RELEVANT: &[EventKind] = &[
    EventKind::Resource,
    EventKind::Takeover,
    EventKind::Force,
    EventKind::Rerun,
    EventKind::Reset,
    EventKind::Rollback,
];

/// Where a resource stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Recorded as created, and not known to be gone.
    Present,
    /// Deleted (its cleanup ran, or someone recorded that it is gone).
    Deleted,
    /// Its check says it is not there any more, though nobody recorded deleting it.
    Missing,
    /// Its cleanup failed; it is probably still there.
    CleanupFailed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Present => "present",
            Health::Deleted => "deleted",
            Health::Missing => "missing",
            Health::CleanupFailed => "cleanup_failed",
        }
    }
}

/// One resource of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub rtype: String,
    pub id: String,
    pub props: BTreeMap<String, String>,
    pub cleanup: Option<String>,
    pub check: Option<String>,
    /// The state and attempt that created it, and the lease owner then.
    pub state: u8,
    pub attempt: Option<u32>,
    pub owner: Option<String>,
    pub created_seq: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: SystemTime,
    pub status: Health,
    /// When it was last checked (a check command, or a cleanup).
    #[serde(with = "crate::time::rfc3339::option")]
    pub last_check: Option<SystemTime>,
    /// How many collections failed to clean it up since it was created.
    pub cleanup_failures: u32,
    /// The last failed cleanup's message.
    pub last_error: Option<String>,
    /// A collector's live claim on its cleanup, until when.
    #[serde(with = "crate::time::rfc3339::option")]
    pub claimed_until: Option<SystemTime>,
    pub claimed_by: Option<String>,
    /// Why nobody will use it any more, when that is so (see [`judge`]).
    pub orphaned: Option<String>,
}

impl Resource {
    /// Still there, as far as the ledger knows.
    pub fn exists(&self) -> bool {
        matches!(self.status, Health::Present | Health::CleanupFailed)
    }

    /// The environment its cleanup and check commands run with.
    pub fn env(&self, build_id: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("BUILDSTATE_BUILD_ID".to_string(), build_id.to_string()),
            ("BUILDSTATE_STATE".to_string(), self.state.to_string()),
            ("BUILDSTATE_RESOURCE_TYPE".to_string(), self.rtype.clone()),
            ("BUILDSTATE_RESOURCE_ID".to_string(), self.id.clone()),
        ];
        for (k, v) in &self.props {
            env.push((format!("BUILDSTATE_RESOURCE_PROP_{k}"), v.clone()));
        }
        env
    }
}

/// The ledger of a build, in the order the resources were created, from its history
/// (oldest first). Orphans are not judged here: see [`judge`].
pub fn ledger(events: &[Event]) -> Vec<Resource> {
    let mut out: Vec<Resource> = Vec::new();
    for e in events.iter().filter(|e| e.kind == EventKind::Resource) {
        let Some(op) = &e.resource else { continue };
        let (rtype, id) = op.key();
        // The newest registration of (type, id) is the one later events speak of.
        let at = out
            .iter()
            .rposition(|r| r.rtype == rtype && r.id == id && r.exists());
        match (op, at) {
            (
                Op::Add {
                    props,
                    cleanup,
                    check,
                    ..
                },
                _,
            ) => out.push(Resource {
                rtype: rtype.to_string(),
                id: id.to_string(),
                props: props.clone(),
                cleanup: cleanup.clone(),
                check: check.clone(),
                state: e.state.unwrap_or_default(),
                attempt: e.attempt,
                owner: e.owner.clone(),
                created_seq: e.seq,
                created_at: e.at,
                status: Health::Present,
                last_check: None,
                cleanup_failures: 0,
                last_error: None,
                claimed_until: None,
                claimed_by: None,
                orphaned: None,
            }),
            (Op::Delete { .. }, Some(i)) => {
                let r = &mut out[i];
                r.status = Health::Deleted;
                r.last_check = Some(e.at);
                r.claimed_until = None;
                r.claimed_by = None;
            }
            (Op::Check { present, .. }, Some(i)) => {
                let r = &mut out[i];
                r.last_check = Some(e.at);
                if r.status != Health::CleanupFailed || !present {
                    r.status = if *present {
                        Health::Present
                    } else {
                        Health::Missing
                    };
                }
            }
            (Op::Claim { until, .. }, Some(i)) => {
                out[i].claimed_until = Some(*until);
                out[i].claimed_by = e.owner.clone();
            }
            (Op::CleanupFailed { .. }, Some(i)) => {
                let r = &mut out[i];
                r.status = Health::CleanupFailed;
                r.cleanup_failures += 1;
                if let Op::CleanupFailed { message, .. } = op {
                    r.last_error = Some(message.clone());
                }
                r.last_check = Some(e.at);
                r.claimed_until = None;
                r.claimed_by = None;
            }
            // A missing resource (checked as gone) may still be deleted or checked again.
            (_, None) => {
                if let Some(i) = out.iter().rposition(|r| r.rtype == rtype && r.id == id) {
                    let r = &mut out[i];
                    match op {
                        Op::Delete { .. } => r.status = Health::Deleted,
                        Op::Check { present: true, .. } => r.status = Health::Present,
                        _ => {}
                    }
                    r.last_check = Some(e.at);
                }
            }
        }
    }
    out
}

/// Mark the resources of `ledger` nobody will use any more with why, given the build,
/// its history (oldest first), the time and how long a failed (waiting), blocked or
/// abandoned (running, lease expired) build keeps its resources (`window`). Deleted ones are never orphans; neither is anything
/// of a build whose lease lives, nor of the attempt that runs now.
pub fn judge(
    build: &Build,
    events: &[Event],
    ledger: &mut [Resource],
    now: SystemTime,
    window: Duration,
) {
    let lease_live = build.lease_owner.is_some() && build.lease_expires_at.is_some_and(|t| t > now);
    for r in ledger.iter_mut() {
        r.orphaned = None;
        if !r.exists() || lease_live {
            continue;
        }
        let later = events.iter().filter(|e| e.seq > r.created_seq);
        let mut why = None;
        for e in later {
            why = match (e.kind, e.state) {
                (EventKind::Takeover, Some(s)) if s == r.state && e.attempt == r.attempt => {
                    Some(format!(
                        "attempt {} of state {s} was taken over (event {})",
                        r.attempt.unwrap_or_default(),
                        e.seq
                    ))
                }
                (EventKind::Force | EventKind::Rerun, Some(from)) if from <= r.state => {
                    Some(format!(
                        "state {} was sent to run again from state {from} (event {})",
                        r.state, e.seq
                    ))
                }
                (EventKind::Force | EventKind::Rerun, None) => Some(format!(
                    "every state was sent to run again (event {})",
                    e.seq
                )),
                (EventKind::Reset, _) => Some(format!("the build was reset (event {})", e.seq)),
                (EventKind::Rollback, Some(to)) if to < r.state => Some(format!(
                    "the build was rolled back to state {to}, before state {} (event {})",
                    r.state, e.seq
                )),
                _ => None,
            };
            if why.is_some() {
                break;
            }
        }
        if why.is_none() && build.status == Status::Cancelled {
            why = Some("the build was cancelled".to_string());
        }
        // Failed (waiting for a retry), blocked, or running with nobody renewing the
        // lease: since when. A pending build (between states) keeps its resources: the
        // next state may use them.
        let since = match build.status {
            Status::Blocked | Status::Waiting => Some(build.updated_at),
            Status::Running => build.lease_expires_at.or(Some(build.updated_at)),
            _ => None,
        };
        let idle = since.map(|t| now.duration_since(t).unwrap_or_default());
        if let (None, Some(idle)) = (&why, idle) {
            if idle >= window {
                let how = match build.status {
                    Status::Running => "running with no live lease".to_string(),
                    s => s.to_string(),
                };
                why = Some(format!(
                    "the build has been {how} for {}, not less than {}",
                    crate::time::format_duration(idle),
                    crate::time::format_duration(window)
                ));
            }
        }
        r.orphaned = why;
    }
}

/// The orphans to collect, newest first (the reverse of the order they were created):
/// those with a cleanup command and no live claim by another collector.
pub fn collectable(ledger: &[Resource], now: SystemTime) -> Vec<&Resource> {
    let mut out: Vec<&Resource> = ledger
        .iter()
        .filter(|r| r.orphaned.is_some() && r.cleanup.is_some())
        .filter(|r| r.claimed_until.is_none_or(|t| t <= now))
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.created_seq));
    out
}

/// A human line for the event's message.
pub fn summary(op: &Op) -> String {
    let (rtype, id) = op.key();
    match op {
        Op::Add { .. } => format!("created {rtype} {id}"),
        Op::Delete { .. } => format!("{rtype} {id} is deleted"),
        Op::Check { present: true, .. } => format!("{rtype} {id} is present"),
        Op::Check { present: false, .. } => format!("{rtype} {id} is missing"),
        Op::Claim { until, .. } => format!(
            "cleanup of {rtype} {id} claimed until {}",
            crate::time::format(*until)
        ),
        Op::CleanupFailed { message, .. } => {
            format!("cleanup of {rtype} {id} failed: {message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(rtype: &str, id: &str) -> Op {
        Op::Add {
            rtype: rtype.into(),
            id: id.into(),
            props: BTreeMap::new(),
            cleanup: Some("true".into()),
            check: None,
        }
    }

    #[test]
    fn a_secret_or_a_control_character_is_refused() {
        assert!(add("key-pair", "bs-1").validate().is_ok());
        assert!(add("key-pair", "bad\nid").validate().is_err());
        assert!(add("key-pair", "").validate().is_err());
        let secret = Op::Add {
            rtype: "x".into(),
            id: "y".into(),
            props: BTreeMap::new(),
            cleanup: Some(
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY aws ec2 x".into(),
            ),
            check: None,
        };
        let err = secret.validate().unwrap_err().to_string();
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn an_op_reads_back_as_written() {
        let op = add("security-group", "sg-1");
        let text = serde_json::to_string(&op).unwrap();
        assert!(
            text.contains(r#""op":"add""#) && text.contains(r#""type":"security-group""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Op>(&text).unwrap(), op);
        assert!(serde_json::from_str::<Op>(r#"{"op":"explode","type":"a","id":"b"}"#).is_err());
    }
}
