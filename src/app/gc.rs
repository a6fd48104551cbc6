//! Collecting what builds leave behind (`monitor gc`, `update-state cancel --cleanup`,
//! `reset --cleanup`): the orphans of each build's resource ledger
//! (`crate::resources::judge`) have their cleanup commands run, newest first, each
//! under a claim written through the build (so two collectors never run one cleanup at
//! once), with retries, and every deletion or failure recorded as an event.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::context::Actor;
use crate::model::Transition;
use crate::resources::{Op, Resource};
use crate::session::Session;
use crate::sync::Writer;
use crate::{Error, Result};

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a failed, blocked or idle build keeps its resources.
    pub window: Duration,
    /// Say what would be deleted, and delete nothing.
    pub dry_run: bool,
    /// How long one try of a cleanup command may run.
    pub timeout: Duration,
    /// How many tries a cleanup gets in one collection.
    pub tries: u32,
    /// The pause between two tries.
    pub retry_delay: Duration,
}

/// What became of one orphan.
#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    pub build_id: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub id: String,
    /// Why nobody uses it any more.
    pub why: String,
    /// deleted, failed, would_delete, no_cleanup, skipped (another collector holds its
    /// claim, or the build's lease came back).
    pub outcome: &'static str,
    pub tries: u32,
    /// The cleanup's output (failed), or why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Collect the orphans of `ledgers` (by build id, judged at `now` with `opts.window`:
/// `Store::all_resources`, or one build's `Store::resources`). `progress` hears of each
/// orphan as it is done.
pub fn collect(
    writer: &mut Writer,
    actor: &Actor,
    ledgers: &[(String, Vec<Resource>)],
    now: SystemTime,
    opts: &Options,
    progress: &dyn Fn(&Collected),
) -> Result<Vec<Collected>> {
    let owner = actor.lease_owner();
    let mut out = Vec::new();
    for (id, ledger) in ledgers {
        let orphans: Vec<&Resource> = ledger.iter().filter(|r| r.orphaned.is_some()).collect();
        // A claim is live against the time of the judgement; the claim write checks again.
        let collectable = crate::resources::collectable(ledger, now);
        // Orphans nothing can delete: said, so a person does it.
        for r in orphans.iter().filter(|r| r.cleanup.is_none()) {
            let c = item(id, r, "no_cleanup", 0, Some("it has no --cleanup command: delete it by hand, then `update-state BUILD resource delete TYPE ID`".into()));
            progress(&c);
            out.push(c);
        }
        for r in collectable {
            let c = if opts.dry_run {
                item(id, r, "would_delete", 0, None)
            } else {
                clean(writer, actor, &owner, id, r, opts)?
            };
            progress(&c);
            out.push(c);
        }
    }
    Ok(out)
}

fn item(
    build_id: &str,
    r: &Resource,
    outcome: &'static str,
    tries: u32,
    message: Option<String>,
) -> Collected {
    Collected {
        build_id: build_id.to_string(),
        rtype: r.rtype.clone(),
        id: r.id.clone(),
        why: r.orphaned.clone().unwrap_or_default(),
        outcome,
        tries,
        message,
    }
}

/// Claim, run and record one cleanup.
fn clean(
    writer: &mut Writer,
    actor: &Actor,
    owner: &str,
    build_id: &str,
    r: &Resource,
    opts: &Options,
) -> Result<Collected> {
    let command = r
        .cleanup
        .as_deref()
        .expect("only resources with a cleanup are collected");
    let mut session = Session {
        writer,
        actor,
        owner,
    };
    // The claim covers every try and pause, and a margin: a collector killed meanwhile
    // leaves it to expire, and the next collection runs the cleanup again (cleanup
    // commands must be safe to run twice: deleting what is gone succeeds).
    let span = (opts.timeout + opts.retry_delay) * opts.tries + Duration::from_secs(5);
    let claim = Transition::Resource {
        state: None,
        op: Op::Claim {
            rtype: r.rtype.clone(),
            id: r.id.clone(),
            until: SystemTime::now() + span,
        },
    };
    match session.record(build_id, &claim, None) {
        Ok(_) => {}
        Err(e @ (Error::Refused(_) | Error::Leased(_))) => {
            return Ok(item(build_id, r, "skipped", 0, Some(e.to_string())));
        }
        Err(e) => return Err(e),
    }
    let env = r.env(build_id);
    let mut last = String::new();
    let mut tries = 0;
    while tries < opts.tries {
        if tries > 0 {
            std::thread::sleep(opts.retry_delay);
        }
        tries += 1;
        let checked = crate::verify::run_check(command, &env, opts.timeout)?;
        if checked.ok {
            let gone = Transition::Resource {
                state: None,
                op: Op::Delete {
                    rtype: r.rtype.clone(),
                    id: r.id.clone(),
                },
            };
            session.record(build_id, &gone, None)?;
            return Ok(item(build_id, r, "deleted", tries, None));
        }
        last = checked.message();
    }
    let message = crate::decide::headline(&last, 2000);
    let failed = Transition::Resource {
        state: None,
        op: Op::CleanupFailed {
            rtype: r.rtype.clone(),
            id: r.id.clone(),
            message: message.clone(),
        },
    };
    session.record(build_id, &failed, None)?;
    Ok(item(build_id, r, "failed", tries, Some(message)))
}
