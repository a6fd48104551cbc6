//! One way to write: how every front end opens a database and moves a build. update-state,
//! run-state, the Concourse put and the Python `Store` (and through it the Ansible
//! plugins) are adapters over this module; none of them decides the write protocol
//! itself (docs/decisions.md, "One way to write").
//!
//! Starting a state is the step they used to disagree on: which lease it takes, whether a
//! completed state runs again (its inputs changed, its verify failed), whether its
//! `requires` command passes, and which inputs the attempt runs with. [`Session::start`]
//! decides all four, once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::context::Actor;
use crate::environment::Settings;
use crate::manifest::{Manifest, Stale};
use crate::model::{Build, Ctx, Transition};
use crate::plan::Plan;
use crate::remote::Remote;
use crate::store::Store;
use crate::sync::Writer;
use crate::{Error, Result};

/// Where the database is and how to open it.
pub struct Open {
    /// The database file (`--db`, `BUILDSTATE_DB`).
    pub db: PathBuf,
    /// How long to wait for another writer's lock (`BUILDSTATE_BUSY_TIMEOUT`).
    pub busy_timeout: Duration,
    /// Remote mode: the remote every write goes through (docs/sync.md).
    pub remote: Option<Remote>,
    /// init-state's right to create a database in local mode. In remote mode the local
    /// database is a cache of the remote and is created when missing either way.
    pub create: bool,
    /// Who lands the journal, for the lines on stderr (`buildstate`, `python`).
    pub tool: &'static str,
}

/// Open the database for writing, as every command does: without a remote (and without
/// `create`) it must exist, and an empty file is no database (exit 9, nothing written);
/// in remote mode what this machine journaled while the remote was away lands first.
pub fn open(o: Open) -> Result<Writer> {
    let store = if o.create || o.remote.is_some() {
        Store::open_with(&o.db, o.busy_timeout)?
    } else {
        Store::open_existing(&o.db, o.busy_timeout)?
    };
    let mut w = Writer::new(store, o.remote);
    land_journal(&mut w, o.tool);
    Ok(w)
}

/// Create a build (or confirm an identical one), as every front end does: the request
/// checked, a build that would wait for itself refused (`crate::parents`, exit 8), then
/// written here and, in remote mode, on the remote ([`Writer::init`]).
pub fn init(
    w: &mut Writer,
    req: &crate::model::InitRequest,
    actor: &crate::context::Actor,
    now: std::time::SystemTime,
) -> Result<crate::store::InitOutcome> {
    req.validate()?;
    let meta: std::collections::BTreeMap<String, String> = req.meta.iter().cloned().collect();
    let child = crate::deps::Child {
        build_id: &req.build_id,
        cloud: &req.cloud,
        image: &req.image,
        meta: &meta,
    };
    crate::parents::refuse_cycles(w, &child, &req.plan, &req.after)?;
    w.init(req, actor, now)
}

/// [`init`], then, for a build it created, reuse what the identical build `from` did
/// (`init-state --reuse-from`, `crate::reuse`), its inputs hashed under `root`. `from`
/// is checked before anything is written (exit 8).
pub fn init_reusing(
    w: &mut Writer,
    req: &crate::model::InitRequest,
    actor: &crate::context::Actor,
    now: std::time::SystemTime,
    from: &str,
    root: Option<&std::path::Path>,
) -> Result<(crate::store::InitOutcome, Option<crate::reuse::Outcome>)> {
    req.validate()?;
    crate::reuse::check_source(w, &req.build_id, from)?;
    // Checked before the build is written, as the source is.
    let root = crate::inputs::root(root)?;
    let outcome = init(w, req, actor, now)?;
    if !outcome.created {
        return Ok((outcome, None));
    }
    let ctx = crate::model::Ctx::at(now);
    let reused = crate::reuse::apply(w, &req.build_id, from, Some(&root), actor, &ctx)?;
    let build = w.store().build(&req.build_id)?.unwrap_or(outcome.build);
    Ok((
        crate::store::InitOutcome {
            build,
            created: true,
        },
        Some(reused),
    ))
}

/// Remote mode: land what this machine journaled while the remote was away, before the
/// command does anything else (docs/sync.md); say on stderr what landed. A failure here
/// never stops the command: what did not land stays journaled for the next one.
pub fn land_journal(w: &mut Writer, tool: &str) {
    match w.land_journal() {
        Ok(done) => {
            for (j, landing) in done {
                match landing {
                    crate::share::Landing::Landed => eprintln!(
                        "{tool}: build '{}': the journaled outcome ({} at {}) landed on remote {}",
                        j.build_id, j.outcome, j.happened_at, j.remote
                    ),
                    crate::share::Landing::Late(why) => eprintln!(
                        "{tool}: build '{}': the journaled outcome ({} at {}) is recorded as a late result of its abandoned attempt: {why}",
                        j.build_id, j.outcome, j.happened_at
                    ),
                    crate::share::Landing::NotYet(e) => eprintln!(
                        "{tool}: warning: build '{}': the journaled outcome ({} at {}) still waits for remote {}: {e}",
                        j.build_id, j.outcome, j.happened_at, j.remote
                    ),
                }
            }
        }
        Err(e) => eprintln!(
            "{tool}: warning: the journal of outcomes not yet shared could not be landed: {e}"
        ),
    }
}

/// The lease a start takes. A lease nobody renews (update-state, the Concourse put) lives
/// as long as asked, else the state's unrenewed lease ([`Plan::unrenewed_lease_ttl`]).
/// A renewed one (run-state, the Python `Store`) lives as long as asked; in remote mode
/// other machines see it only as the start wrote it (not the heartbeats), so there it
/// covers the state's whole run too.
pub fn lease_ttl(
    asked: Option<Duration>,
    renewed: bool,
    remote: bool,
    plan: &Plan,
    state: u8,
) -> Duration {
    let unrenewed = plan.unrenewed_lease_ttl(state);
    match asked {
        None => unrenewed,
        Some(ttl) if renewed && remote => ttl.max(unrenewed),
        Some(ttl) => ttl,
    }
}

/// What a start needs to know besides the state.
#[derive(Debug, Default, Clone, Copy)]
pub struct Start<'a> {
    pub state: u8,
    /// The lease asked for ([`lease_ttl`]).
    pub lease_ttl: Option<Duration>,
    /// Whether this process renews the lease with heartbeats.
    pub renewed: bool,
    /// The directory the plan's input globs are relative to (default: the working
    /// directory).
    pub inputs_root: Option<&'a Path>,
    /// The caller brought this database's copy of the build up to date just now (no
    /// second pull).
    pub refreshed: bool,
    /// The stale states the caller already judged on that copy (no second hash).
    pub known_stale: Option<&'a [Stale]>,
    /// Hash the state's inputs now, before its command runs: the inputs it runs with,
    /// recorded when it completes (run-state).
    pub hash_inputs: bool,
}

/// A start that was recorded, or the prerequisite that stopped it. Returned once per
/// start and taken apart at once: not worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Started {
    Running {
        build: Build,
        lease_ttl: Duration,
        /// The inputs hashed before the command ([`Start::hash_inputs`]).
        inputs: Option<Box<Manifest>>,
    },
    /// The state's `requires` command did not pass: the build is blocked on it (recorded)
    /// and no attempt was used.
    Unmet { reason: String },
}

impl Started {
    /// The start as a result for a front end with no blocked outcome of its own: an
    /// unmet prerequisite is [`Error::Blocked`].
    pub fn running(self, build_id: &str) -> Result<(Build, Duration)> {
        match self {
            Started::Running {
                build, lease_ttl, ..
            } => Ok((build, lease_ttl)),
            Started::Unmet { reason } => Err(Error::Blocked(format!(
                "build '{build_id}' is blocked: {reason}; fix the cause, then allow the state again with a retry"
            ))),
        }
    }
}

/// The inputs a completion records.
#[derive(Debug, Clone)]
pub enum Inputs<'a> {
    /// Hash them now: the plan's for the state plus `extra` globs, relative to `root`.
    Hash {
        root: Option<&'a Path>,
        extra: &'a [String],
    },
    /// Hashed already, before the command ran (what [`Started::Running`] carries).
    Known(Option<Box<Manifest>>),
}

/// One front end's writes: the database, who acts, and the lease holder it acts as.
pub struct Session<'a> {
    pub writer: &'a mut Writer,
    pub actor: &'a Actor,
    pub owner: &'a str,
}

impl<'a> Session<'a> {
    fn ctx(&self) -> Ctx<'a> {
        Ctx {
            owner: Some(self.owner),
            ..Ctx::live()
        }
    }

    /// Start `s.state`: a completed state runs again only if it is stale (the rerun is
    /// recorded first), its `requires` must pass, then the start takes the lease
    /// ([`lease_ttl`]).
    pub fn start(&mut self, build_id: &str, s: &Start<'_>) -> Result<Started> {
        if !s.refreshed {
            self.writer.refresh(build_id)?;
        }
        let (_, plan) = self.writer.store().build_and_plan(build_id)?;
        let ttl = lease_ttl(
            s.lease_ttl,
            s.renewed,
            self.writer.is_remote(),
            &plan,
            s.state,
        );
        let ctx = Ctx {
            lease_ttl: Some(ttl),
            ..self.ctx()
        };
        crate::inputs::rerun_if_stale_here(
            self.writer,
            build_id,
            s.state,
            s.inputs_root,
            s.known_stale,
            self.actor,
            &ctx,
        )?;
        if let Some(reason) =
            crate::verify::check_requires(self.writer, build_id, s.state, self.actor, &ctx)?
        {
            return Ok(Started::Unmet { reason });
        }
        let inputs = if s.hash_inputs {
            crate::inputs::for_completion(self.writer, build_id, s.state, s.inputs_root, &[])?
        } else {
            None
        };
        let build = self.writer.transition(
            build_id,
            &Transition::Start { state: s.state },
            self.actor,
            &ctx,
        )?;
        Ok(Started::Running {
            build,
            lease_ttl: ttl,
            inputs,
        })
    }

    /// Record that `state` completed with its inputs; `fence`: the attempt this worker
    /// started, refused (exit 14) if it is no longer the one running under its lease.
    pub fn complete(
        &mut self,
        build_id: &str,
        state: u8,
        inputs: Inputs<'_>,
        fence: Option<u32>,
    ) -> Result<Build> {
        let inputs = match inputs {
            Inputs::Known(known) => known,
            Inputs::Hash { root, extra } => {
                self.writer.refresh(build_id)?;
                crate::inputs::for_completion(self.writer, build_id, state, root, extra)?
            }
        };
        self.record(build_id, &Transition::Complete { state, inputs }, fence)
    }

    /// Record any other transition (a failure, an interruption, a person's verb) as this
    /// session's owner; `fence` as for [`Session::complete`].
    pub fn record(&mut self, build_id: &str, t: &Transition, fence: Option<u32>) -> Result<Build> {
        let ctx = Ctx {
            fence,
            ..self.ctx()
        };
        self.writer.transition(build_id, t, self.actor, &ctx)
    }
}

/// After a write: deliver the Slack alerts that are due, within the settings' budget
/// (`BUILDSTATE_SLACK_BUDGET`, default 2 s), so that a pipeline never waits on Slack for
/// longer. Whatever is left, or fails, stays queued for `monitor deliver` or the next
/// command; this never changes the command's outcome.
pub fn deliver_after_write(tool: &str, store: &mut Writer, settings: &Settings) {
    let target = match crate::environment::slack_target() {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            eprintln!("{tool}: warning: Slack alerts are not sent: {e}");
            return;
        }
    };
    let worker = crate::environment::actor(tool).lease_owner();
    match crate::notify::slack::deliver(store, &target, &settings.slack, &worker) {
        Ok(r) if r.gave_up > 0 => eprintln!(
            "{tool}: warning: {} Slack alert(s) could not be delivered and were given up (see `monitor status`): {}",
            r.gave_up,
            r.last_error.as_deref().unwrap_or("no detail")
        ),
        Ok(r) if r.retried > 0 || r.left > 0 => eprintln!(
            "{tool}: warning: {} Slack alert(s) not delivered yet ({}); they stay queued for `monitor deliver` or the next command",
            r.retried.max(u32::try_from(r.left).unwrap_or(u32::MAX)),
            r.last_error.as_deref().unwrap_or("the time budget ran out")
        ),
        Ok(_) => {}
        Err(e) => eprintln!(
            "{tool}: warning: Slack alerts stay queued for `monitor deliver`: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::from_toml(
            "name = \"p\"\n[[state]]\nid = 0\nname = \"init\"\nexpected = \"1m\"\n[[state]]\nid = 5\nname = \"k\"\nexpected = \"10m\"\n[[state]]\nid = 10\nname = \"t\"\nexpected = \"1m\"\ntimeout = \"2h\"\n",
            "test",
        )
        .unwrap()
    }

    /// The rule every front end used to write for itself, once.
    #[test]
    fn the_lease_a_start_takes() {
        let p = plan();
        let min = Duration::from_secs(60);
        // Nobody renews it: as asked, else the state's timeout, else twice its expected.
        assert_eq!(
            lease_ttl(None, false, false, &p, 5),
            Duration::from_secs(1200)
        );
        assert_eq!(
            lease_ttl(None, false, true, &p, 10),
            Duration::from_secs(7200)
        );
        assert_eq!(lease_ttl(Some(min), false, true, &p, 10), min);
        // Renewed: as asked here; in remote mode it covers the whole run too.
        assert_eq!(lease_ttl(Some(min), true, false, &p, 10), min);
        assert_eq!(
            lease_ttl(Some(min), true, true, &p, 10),
            Duration::from_secs(7200)
        );
        let long = Duration::from_secs(9000);
        assert_eq!(lease_ttl(Some(long), true, true, &p, 10), long);
    }
}
