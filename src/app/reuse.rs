//! Reuse (issue 29): a new build records as `reused` every leading state of an identical
//! build whose recorded inputs are what the new build's inputs hash to now, and whose
//! outputs are current (`init-state B2 --reuse-from B1`). The first state that differs
//! runs normally, and so does every state after it. A reused state's resources stay the
//! other build's: only its outputs come along, so `monitor gc` never cleans them up twice.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::inputs::{compute, outputs_here, process_env, Detail, FileCache, Sources};
use crate::manifest::{changes, Manifest, Mark};
use crate::model::{Ctx, EventKind, Transition};
use crate::sync::Writer;
use crate::{Error, Result};

/// One state reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reused {
    pub state: u8,
    pub name: String,
    /// The other build's attempt whose result this is.
    pub attempt: Option<u32>,
}

/// What a reuse did: the states reused, in order, and why the next one was not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub from: String,
    pub reused: Vec<Reused>,
    /// Why reuse stopped where it did (`None`: every state was reused).
    pub stopped: Option<String>,
    /// What went wrong, when reuse failed after the build was created (the remote was
    /// away, ...): the build stands, with the states reused up to there, and the rest
    /// run normally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Check, before anything is written, that `from` can be reused by `build_id`: another
/// build, and one that exists (read from the remote in remote mode). Exit 8 otherwise.
pub fn check_source(w: &mut Writer, build_id: &str, from: &str) -> Result<()> {
    crate::model::validate_build_id(from).map_err(|_| {
        Error::InvalidInput(format!(
            "--reuse-from '{}' is not a build id; nothing was written",
            crate::model::echo(from)
        ))
    })?;
    if from == build_id {
        return Err(Error::InvalidInput(format!(
            "--reuse-from {from}: a build cannot reuse its own states; name the earlier identical build; nothing was written"
        )));
    }
    match w.refresh(from) {
        Err(Error::RemoteChanged(_)) | Ok(()) => {}
        Err(e) => return Err(e),
    }
    if w.store().build(from)?.is_none() {
        let similar = crate::report::similar_builds(w.store(), from)?;
        return Err(Error::InvalidInput(format!(
            "--reuse-from {from}: there is no build '{from}'{}; nothing was written",
            if similar.is_empty() {
                String::new()
            } else {
                format!(" (similar: {})", similar.join(", "))
            }
        )));
    }
    Ok(())
}

/// Record as `reused` the leading states of `from` that `build_id` (just created, nothing
/// run) may take as they are, hashing its inputs under `root_dir` (as check-state does).
/// The build is written already: a failure here is reported in the outcome (`error`),
/// with the states reused before it, not as a failure of the whole init.
pub fn apply(
    w: &mut Writer,
    build_id: &str,
    from: &str,
    root_dir: Option<&Path>,
    actor: &crate::context::Actor,
    ctx: &Ctx<'_>,
) -> Result<Outcome> {
    let (todo, mut out) = match judge(w.store(), build_id, from, root_dir) {
        Ok(judged) => judged,
        Err(e) => {
            return Ok(Outcome {
                from: from.to_string(),
                reused: Vec::new(),
                stopped: Some("nothing was reused: every state runs".into()),
                error: Some(e.to_string()),
            })
        }
    };
    for (i, t) in todo.iter().enumerate() {
        if let Err(e) = w.transition(build_id, t, actor, ctx) {
            let label = format!("state {} ({})", out.reused[i].state, out.reused[i].name);
            out.reused.truncate(i);
            out.stopped = Some(format!("{label} could not be recorded as reused: it runs"));
            out.error = Some(e.to_string());
            break;
        }
    }
    Ok(out)
}

/// The reuses [`apply`] records, judged on this database, and what it reports.
fn judge(
    store: &crate::store::Store,
    build_id: &str,
    from: &str,
    root_dir: Option<&Path>,
) -> Result<(Vec<Transition>, Outcome)> {
    let mut out = Outcome {
        from: from.to_string(),
        reused: Vec::new(),
        stopped: None,
        error: None,
    };
    let (Some(b2), Some(b1)) = (store.build(build_id)?, store.build(from)?) else {
        return Err(Error::UnknownBuild(from.to_string()));
    };
    if b1.plan_hash != b2.plan_hash {
        out.stopped = Some(format!("build {from} was made with another plan: its states may do other things, so none is reused"));
        return Ok((Vec::new(), out));
    }
    if let Some(why) = store.revoked(from)? {
        out.stopped = Some(format!(
            "build {from} revoked its outputs ({why}): none is reused"
        ));
        return Ok((Vec::new(), out));
    }
    let plan = store.plan(&b2.plan_hash)?;
    let marks = store.marks(from)?;
    let events = store.events(from)?;
    let outputs = store.outputs(from)?;
    let meta = store.metadata(build_id)?;
    let root = crate::inputs::root(root_dir)?;
    let mut cache = FileCache::load(store, &root)?;
    let builds = outputs_here(store, &b2, &meta);
    // Compared under the other build's salt (its digests of variables and metadata are
    // salted with its lineage), recorded under this one's.
    let src = |salt| Sources {
        root: root.clone(),
        env: &process_env,
        meta: &meta,
        salt,
        builds: &builds,
    };
    let mut todo: Vec<Transition> = Vec::new();
    for s in plan
        .states
        .iter()
        .filter(|s| b2.current_state.is_none_or(|c| s.id > c))
    {
        let label = plan.label(s.id);
        if b1.current_state.is_none_or(|c| c < s.id) {
            out.stopped = Some(format!("build {from} has not completed {label}"));
            break;
        }
        let done = Mark::last_done(&marks, s.id);
        let Some(done) = done.filter(|d| matches!(d.kind, EventKind::Complete | EventKind::Reused))
        else {
            out.stopped = Some(format!(
                "build {from} did not run {label} (skipped): nothing says what it would do here"
            ));
            break;
        };
        if Mark::drift_since(&marks, done, s.id).is_some() {
            out.stopped = Some(format!(
                "{label} of build {from} drifted (its verify failed)"
            ));
            break;
        }
        let (Some(raw), Some(def)) = (done.inputs.as_deref(), s.inputs.as_ref()) else {
            out.stopped = Some(format!("{label} declares no inputs (or {from} recorded none): nothing says it would do the same here"));
            break;
        };
        let then: Manifest = serde_json::from_str(raw).map_err(|e| {
            Error::Corrupt(format!("build '{from}' event {} inputs: {e}", done.seq))
        })?;
        let extra = crate::inputs::extra_globs(&then.globs, def);
        let now = compute(def, &extra, &src(&b1.lineage), &mut cache, Detail::Digest)?;
        if now.digest != then.digest {
            let full = compute(def, &extra, &src(&b1.lineage), &mut cache, Detail::Full)?;
            out.stopped = Some(format!(
                "{label}'s inputs differ from {from}'s: {}",
                changes(&then, &full).join(", ")
            ));
            break;
        }
        let mine = compute(def, &extra, &src(&b2.lineage), &mut cache, Detail::Full)?;
        let event = events.iter().find(|e| e.seq == done.seq);
        let attempt = event.and_then(|e| e.attempt);
        let note = event.map_or_else(String::new, |e| {
            format!(
                "{}completed at {} by {} with the same inputs",
                attempt.map_or(String::new(), |a| format!("attempt {a} ")),
                crate::time::format(e.at),
                e.owner
                    .clone()
                    .unwrap_or_else(|| format!("{}@{}", e.actor.user, e.actor.host))
            )
        });
        let made: BTreeMap<String, String> = outputs
            .iter()
            .filter(|(_, o)| o.state == s.id)
            .map(|(k, o)| (k.clone(), o.value.clone()))
            .collect();
        todo.push(Transition::Reuse {
            state: s.id,
            from: from.to_string(),
            attempt,
            note,
            inputs: Some(Box::new(mine)),
            outputs: made,
        });
        out.reused.push(Reused {
            state: s.id,
            name: s.name.clone(),
            attempt,
        });
    }
    cache.save(store, &root);
    Ok((todo, out))
}
