//! Outcomes that must not be lost while the remote is away (issue 25).
//!
//! In remote mode the outcome of a command that ran (completed, failed, interrupted) is
//! the one write a worker cannot do again: the command's hours are spent. When the
//! remote does not answer, [`Writer::transition`] keeps the outcome in this machine's
//! journal first (durably, with its write id and attempt), then keeps trying to land it
//! while the worker's lease is valid, saying so on stderr. If the remote stays away
//! longer, the command ends with exit 22 (`JOURNALED`) and the outcome lands with the next
//! buildstate command on this machine in remote mode ([`Writer::land_journal`]), or
//! `sync-cloud push`. It lands exactly once: a write whose id the remote's history
//! already holds is not written again. If the state was taken over or moved on
//! meanwhile, it is recorded as a `late` result of the abandoned attempt, never as a
//! second truth. The time it is recorded with is the time its command ended.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::context::Actor;
use crate::model::{Build, Ctx, Transition};
use crate::store::Journaled;
use crate::sync::Writer;
use crate::{Error, Result};

/// The transitions that are journaled: what a command that ran did (complete, fail,
/// interrupt), stored as the transition's own JSON (`Transition`'s serde form, which
/// only these three have).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "Transition", into = "Transition")]
struct Outcome(Transition);

impl TryFrom<Transition> for Outcome {
    type Error = String;
    fn try_from(t: Transition) -> std::result::Result<Outcome, String> {
        Outcome::of(&t).ok_or_else(|| "not an outcome".to_string())
    }
}

impl From<Outcome> for Transition {
    fn from(o: Outcome) -> Transition {
        o.0
    }
}

impl Outcome {
    fn of(t: &Transition) -> Option<Outcome> {
        matches!(
            t,
            Transition::Complete { .. } | Transition::Fail { .. } | Transition::Interrupt { .. }
        )
        .then(|| Outcome(t.clone()))
    }

    fn transition(self) -> Transition {
        self.0
    }

    fn state(&self) -> u8 {
        match &self.0 {
            Transition::Complete { state, .. }
            | Transition::Fail { state, .. }
            | Transition::Interrupt { state, .. } => *state,
            _ => unreachable!("an outcome is a complete, fail or interrupt"),
        }
    }

    /// For people: "completed state 5", "failed state 5: ...".
    fn describe(&self) -> String {
        match &self.0 {
            Transition::Complete { state, .. } => format!("completed state {state}"),
            Transition::Fail { state, message, .. } => format!(
                "failed state {state}: {}",
                crate::decide::headline(message, 200)
            ),
            Transition::Interrupt { state, signal } => {
                format!("interrupted state {state} ({signal})")
            }
            _ => unreachable!("an outcome is a complete, fail or interrupt"),
        }
    }
}

/// What became of a journaled outcome on one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// Written to the remote now (or found there already: it had landed).
    Landed,
    /// The state was taken over or moved past: recorded as a late result; the error
    /// says why it could not land as itself.
    Late(String),
    /// The remote is still away; it stays journaled.
    NotYet(String),
}

/// One journaled outcome as people read it (`check-state`, `monitor status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub build_id: String,
    pub state: Option<u8>,
    pub outcome: String,
    pub happened_at: String,
    pub remote: String,
    pub last_error: Option<String>,
}

impl Waiting {
    pub fn of(j: &Journaled) -> Waiting {
        let outcome = serde_json::from_str::<Outcome>(&j.outcome).ok();
        Waiting {
            build_id: j.build_id.clone(),
            state: outcome.as_ref().map(Outcome::state),
            outcome: outcome.map_or_else(|| "an outcome".into(), |o| o.describe()),
            happened_at: crate::time::format(j.happened_at),
            remote: j.remote.clone(),
            last_error: j.last_error.clone(),
        }
    }
}

/// The longest pause between two tries while the remote is away.
const MAX_PAUSE: Duration = Duration::from_secs(30);

impl Writer {
    /// [`Writer::transition`] in remote mode for an outcome the remote did not take
    /// (`error`): journal it, then keep trying while the lease lasts.
    pub(super) fn hold_outcome(
        &mut self,
        build_id: &str,
        t: &Transition,
        actor: &Actor,
        ctx: &Ctx<'_>,
        error: String,
    ) -> Result<Build> {
        let Some(outcome) = Outcome::of(t) else {
            return Err(Error::Remote(error));
        };
        let remote = self
            .remote()
            .map(|r| r.name().to_string())
            .unwrap_or_default();
        let happened = ctx.happened.unwrap_or_else(|| self.now_offline());
        let row = Journaled {
            id: 0,
            build_id: build_id.to_string(),
            remote: remote.clone(),
            write_id: ctx
                .write_id
                .map_or_else(crate::store::new_write_id, str::to_string),
            outcome: serde_json::to_string(&outcome).expect("serializes"),
            owner: ctx.owner.map(str::to_string),
            fence: ctx.fence,
            actor: serde_json::to_string(actor).expect("serializes"),
            happened_at: happened,
            journaled_at: std::time::SystemTime::now(),
            last_error: Some(error.clone()),
        };
        let row = Journaled {
            id: self.store.journal(&row)?,
            ..row
        };
        // The lease the outcome was made under: while it lasts, nobody else may take the
        // state, so trying to land it is the right thing to do; past it, the worker goes.
        let until = self
            .store
            .build(build_id)?
            .filter(|b| b.lease_owner.is_some() && b.lease_owner.as_deref() == ctx.owner)
            .and_then(|b| b.lease_expires_at)
            .unwrap_or(happened);
        let what = outcome.describe();
        let mut error = error;
        let mut pause = Duration::from_secs(1);
        loop {
            let left = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            if left.is_zero() {
                return Err(Error::Journaled(format!(
                    "build '{build_id}': {what}, but remote {remote} did not take it ({error}); the outcome is journaled on this machine and lands, once, with the next buildstate command here in remote mode (or `sync-cloud push {build_id}`)"
                )));
            }
            let wait = pause.min(left);
            eprintln!(
                "buildstate: build '{build_id}': remote {remote} did not take the outcome ({what}): {error}; it is kept on this machine and tried again in {} (until the lease ends at {})",
                crate::time::format_duration(wait),
                crate::time::format(until)
            );
            std::thread::sleep(wait);
            pause = (pause * 2).min(MAX_PAUSE);
            match self.land(&row)? {
                (Landing::Landed, Some(b)) => return Ok(b),
                (Landing::NotYet(e), _) => error = e,
                (Landing::Late(why), b) => {
                    eprintln!("buildstate: build '{build_id}': {what} was recorded as a late result: {why}");
                    return match b {
                        Some(b) => Err(Error::Fenced(format!(
                            "build '{build_id}': {what}, but the state was taken over or moved on while the remote was away ({why}); it is recorded as a late result of the abandoned attempt {}, not as the state's outcome (serial {})",
                            row.fence.unwrap_or(0),
                            b.serial
                        ))),
                        None => Err(Error::Fenced(why)),
                    };
                }
                (Landing::Landed, None) => {
                    return self
                        .store
                        .build(build_id)?
                        .ok_or_else(|| Error::UnknownBuild(build_id.to_string()))
                }
            }
        }
    }

    /// This machine's clock corrected by the remote's offset if it was measured, else
    /// as it is (the remote is away: it cannot be measured now).
    pub(super) fn now_offline(&mut self) -> SystemTime {
        match self.clock_offset_known() {
            Some(_) => self.now().unwrap_or_else(|_| SystemTime::now()),
            None => SystemTime::now(),
        }
    }

    /// One try to land a journaled outcome: the build as written when it landed now.
    fn land(&mut self, j: &Journaled) -> Result<(Landing, Option<Build>)> {
        let outcome: Outcome = serde_json::from_str(&j.outcome).map_err(|e| {
            Error::Corrupt(format!("journaled outcome {} cannot be read: {e}", j.id))
        })?;
        let actor: Actor = serde_json::from_str(&j.actor).map_err(|e| {
            Error::Corrupt(format!("journaled outcome {} cannot be read: {e}", j.id))
        })?;
        match self.refresh(&j.build_id) {
            Err(Error::Remote(e)) => {
                self.store.journal_error(j.id, &e)?;
                return Ok((Landing::NotYet(e), None));
            }
            other => other?,
        }
        if self.store.has_write(&j.build_id, &j.write_id)? {
            self.store.unjournal(j.id)?;
            return Ok((Landing::Landed, None));
        }
        let ctx = Ctx {
            owner: j.owner.as_deref(),
            fence: j.fence,
            write_id: Some(&j.write_id),
            happened: Some(j.happened_at),
            ..Ctx::live()
        };
        let state = outcome.state();
        let what = outcome.describe();
        match self.transition_remote(&j.build_id, &outcome.transition(), &actor, &ctx) {
            Ok(b) => {
                self.store.unjournal(j.id)?;
                Ok((Landing::Landed, Some(b)))
            }
            Err(Error::Remote(e)) => {
                self.store.journal_error(j.id, &e)?;
                Ok((Landing::NotYet(e), None))
            }
            Err(refused) => {
                // Reachable, but the attempt is no longer current: keep what it did in
                // the history, as what it was.
                let why = refused.to_string();
                let late = Transition::Late {
                    state,
                    attempt: j.fence.unwrap_or(0),
                    message: format!(
                        "late result of attempt {} ({}), journaled while remote {} was away: it {what} at {}; not recorded as the state's outcome: {why}",
                        j.fence.unwrap_or(0),
                        j.owner.as_deref().unwrap_or("no lease holder"),
                        j.remote,
                        crate::time::format(j.happened_at),
                    ),
                };
                let ctx = Ctx {
                    happened: Some(j.happened_at),
                    ..Ctx::live()
                };
                match self.transition_remote(&j.build_id, &late, &actor, &ctx) {
                    Ok(b) => {
                        self.store.unjournal(j.id)?;
                        Ok((Landing::Late(why), Some(b)))
                    }
                    Err(Error::Remote(e)) => {
                        self.store.journal_error(j.id, &e)?;
                        Ok((Landing::NotYet(e), None))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Land what this machine journaled for the remote in use (remote mode; nothing to
    /// do otherwise). Every command in remote mode calls this first; `sync-cloud push`
    /// too. What did not land yet stays, with its last error.
    pub fn land_journal(&mut self) -> Result<Vec<(Waiting, Landing)>> {
        let Some(name) = self.remote().map(|r| r.name().to_string()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for j in self.store.journaled(Some(&name), None)? {
            let (landing, _) = self.land(&j)?;
            out.push((Waiting::of(&j), landing));
        }
        Ok(out)
    }

    /// What this machine's journal holds (every remote), for people.
    pub fn waiting(&self, build_id: Option<&str>) -> Result<Vec<Waiting>> {
        Ok(self
            .store
            .journaled(None, build_id)?
            .iter()
            .map(Waiting::of)
            .collect())
    }
}
