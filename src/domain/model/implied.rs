//! What a build's events say of its summary, folded one event at a time. [`apply`]
//! folds the events it writes into the build it returns; snapshot validation folds a
//! snapshot's whole history and refuses a summary that says otherwise. One fold, so the
//! two cannot drift apart (issue 26).
//!
//! [`apply`]: super::apply

use std::time::SystemTime;

use super::{Build, Event, EventKind, NewEvent, Status};
use crate::plan::Plan;

/// The part of a build's summary its events determine: the last completed state, the
/// active state, the status, the attempt, the next retry's time and the lease holder.
/// `status`, `next` and `lease` are `None` where the events cannot tell (written by an
/// older buildstate).
#[derive(Debug, Clone, PartialEq)]
pub struct Implied {
    pub current: Option<u8>,
    pub active: Option<u8>,
    pub status: Option<Status>,
    pub attempt: u32,
    pub next: Option<Option<SystemTime>>,
    /// The holder and when the start that took the lease said it ends (heartbeats may
    /// extend it since).
    pub lease: Option<Option<(String, SystemTime)>>,
}

impl Default for Implied {
    /// A build with no event yet.
    fn default() -> Implied {
        Implied {
            current: None,
            active: None,
            status: Some(Status::Pending),
            attempt: 0,
            next: Some(None),
            lease: Some(None),
        }
    }
}

/// What the fold reads of one event.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub kind: EventKind,
    pub state: Option<u8>,
    pub attempt: Option<u32>,
    pub until: Option<SystemTime>,
    /// Who wrote it, as lease holder.
    pub owner: Option<&'a str>,
    /// Written by a buildstate that records `until` and the owner with each event.
    pub recorded: bool,
}

impl<'a> Facts<'a> {
    /// A stored event.
    pub fn of(e: &'a Event) -> Facts<'a> {
        Facts {
            kind: e.kind,
            state: e.state,
            attempt: e.attempt,
            until: e.until,
            owner: e.owner.as_deref(),
            recorded: e.write_id.is_some(),
        }
    }

    /// An event about to be written by `owner`, as the store will record it.
    pub fn new(e: &NewEvent, owner: Option<&'a str>) -> Facts<'a> {
        Facts {
            kind: e.kind,
            state: e.state,
            attempt: e.attempt,
            until: e.until,
            owner,
            recorded: true,
        }
    }
}

impl Implied {
    /// What `b`'s summary says now.
    pub fn of(b: &Build) -> Implied {
        Implied {
            current: b.current_state,
            active: b.active_state,
            status: Some(b.status),
            attempt: b.attempt,
            next: Some(b.next_attempt_at),
            lease: Some(b.lease_owner.clone().zip(b.lease_expires_at)),
        }
    }

    /// Fold one event in. `Err`: an event that needs a state names none.
    pub fn fold(&mut self, plan: &Plan, e: &Facts<'_>) -> Result<(), String> {
        let last = plan.last().id;
        let done = |state: Option<u8>| Implied {
            current: state,
            status: Some(if state == Some(last) {
                Status::Completed
            } else {
                Status::Pending
            }),
            ..Implied::default()
        };
        match (e.kind, e.state) {
            (EventKind::Init, s) => *self = s.map_or_else(Implied::default, |s| done(Some(s))),
            (EventKind::Start, Some(s)) => {
                self.active = Some(s);
                self.status = Some(Status::Running);
                self.attempt = e.attempt.unwrap_or(self.attempt);
                self.next = Some(None);
                self.lease = e
                    .recorded
                    .then(|| e.until.and(e.owner.map(str::to_string)).zip(e.until));
            }
            (EventKind::Complete | EventKind::Skip | EventKind::Reused, Some(s)) => {
                *self = done(Some(s))
            }
            (EventKind::Fail, Some(s)) => {
                self.active = Some(s);
                self.attempt = e.attempt.unwrap_or(self.attempt);
                self.lease = Some(None);
                if e.recorded {
                    self.status = Some(if e.until.is_some() {
                        Status::Waiting
                    } else {
                        Status::Blocked
                    });
                    self.next = Some(e.until);
                } else {
                    // An older writer: waiting or blocked, the history cannot say.
                    self.status = None;
                    self.next = None;
                }
            }
            (EventKind::Interrupt | EventKind::Retry, Some(_)) => {
                self.status = Some(Status::Waiting);
                self.next = e.recorded.then_some(e.until);
                self.lease = Some(None);
            }
            (EventKind::Rollback, Some(s)) => {
                *self = Implied {
                    current: Some(s),
                    ..Implied::default()
                }
            }
            (EventKind::Force | EventKind::Reset | EventKind::Rerun, from) => {
                *self = done(plan.kept_when_reopened(from))
            }
            (EventKind::Prerequisite, Some(s)) => {
                if self.active != Some(s) {
                    self.attempt = 0;
                }
                self.active = Some(s);
                self.status = Some(Status::Blocked);
                self.next = Some(None);
                self.lease = Some(None);
            }
            (EventKind::Cancel, _) => {
                self.status = Some(Status::Cancelled);
                self.next = Some(None);
                self.lease = Some(None);
            }
            (
                EventKind::Meta
                | EventKind::Task
                | EventKind::Pruned
                | EventKind::Takeover
                | EventKind::Drift
                | EventKind::Verified
                | EventKind::Unverified
                | EventKind::Late
                | EventKind::Output
                | EventKind::Resource
                | EventKind::Revoke,
                _,
            ) => {}
            (kind, None) => return Err(format!("({kind}) names no state")),
        }
        Ok(())
    }

    /// Set `b`'s summary to what the events say (where they can tell).
    pub fn write_to(&self, b: &mut Build) {
        b.current_state = self.current;
        b.active_state = self.active;
        b.attempt = self.attempt;
        if let Some(s) = self.status {
            b.status = s;
        }
        if let Some(next) = self.next {
            b.next_attempt_at = next;
        }
        if let Some(lease) = &self.lease {
            (b.lease_owner, b.lease_expires_at) = match lease {
                Some((owner, until)) => (Some(owner.clone()), Some(*until)),
                None => (None, None),
            };
        }
    }
}
