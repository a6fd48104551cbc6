//! The other builds a build's state waits for (`after` in its plan: `crate::deps`), as
//! known here: read from this database, after a refresh from the remote in remote mode
//! (one read per parent, into the local copy). And, at init, a build that would wait on
//! itself, directly or through the builds it waits for, is refused.

use crate::deps::{judge, parse_after, resolve, Child, Known, Unmet};
use crate::model::Build;
use crate::plan::Plan;
use crate::sync::Writer;
use crate::{Error, Result};

/// The parents of `state` of `child` (under `plan`), each resolved for it: (parent id,
/// the parent's state it waits for).
fn parents_of(child: &Child<'_>, plan: &Plan, state: u8) -> Result<Vec<(String, u8)>> {
    let Some(def) = plan.state(state) else {
        return Ok(Vec::new());
    };
    def.after
        .iter()
        .map(|text| {
            let a = parse_after(text).map_err(|m| Error::InvalidPlan {
                origin: format!("plan '{}'", plan.name),
                message: format!("{}.after: {m}", plan.label(state)),
            })?;
            Ok((resolve(&a.build, child)?, a.state))
        })
        .collect()
}

/// The builds whose outputs the states of `plan` (up to `upto`; `None`: all) consume
/// (`inputs.builds`), resolved for `child`: a dependency too, for cycles.
fn consumed_of(child: &Child<'_>, plan: &Plan, upto: Option<u8>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in plan
        .states
        .iter()
        .filter(|s| upto.is_none_or(|u| s.id <= u))
    {
        for e in s.inputs.iter().flat_map(|i| &i.builds) {
            let c = crate::deps::parse_consumed(e).map_err(|m| Error::InvalidPlan {
                origin: format!("plan '{}'", plan.name),
                message: format!("{}.inputs.builds: {m}", plan.label(s.id)),
            })?;
            out.push(resolve(&c.build, child)?);
        }
    }
    Ok(out)
}

/// The parents of every state of `build_id` (`init-state --after`): (id, state).
fn build_level(writer: &Writer, build_id: &str) -> Result<Vec<(String, u8)>> {
    writer
        .store()
        .build_after(build_id)?
        .iter()
        .map(|text| {
            let a = parse_after(text)
                .map_err(|m| Error::Corrupt(format!("build '{build_id}': its --after {m}")))?;
            Ok((a.build, a.state))
        })
        .collect()
}

/// What is known of the parent `id` here (after a refresh in remote mode).
fn known(writer: &mut Writer, id: &str, state: u8) -> Result<Option<Known>> {
    refresh(writer, id)?;
    let Some(p) = writer.store().build(id)? else {
        // An archived parent is judged by its archive record.
        return Ok(writer
            .store()
            .archived(id)?
            .map(|a| Known::archived(&a.status, state)));
    };
    let plan = writer.store().plan(&p.plan_hash)?;
    Ok(Some(Known {
        status: p.status,
        current_state: p.current_state,
        state_name: plan.state(state).map(|d| d.name.clone()),
        revoked: writer.store().revoked(id)?,
        archived: false,
    }))
}

/// Bring up to date from the remote (remote mode) every build whose output a state of `b`
/// up to `upto` consumes (`inputs.builds`): one read per parent, before its outputs are
/// hashed or compared.
pub fn refresh_consumed(
    writer: &mut Writer,
    b: &Build,
    plan: &Plan,
    upto: Option<u8>,
) -> Result<()> {
    let Some(upto) = upto else {
        return Ok(());
    };
    let consumes = plan
        .states
        .iter()
        .filter(|s| s.id <= upto)
        .any(|s| s.inputs.as_ref().is_some_and(|i| !i.builds.is_empty()));
    if !consumes || !writer.is_remote() {
        return Ok(());
    }
    let meta = writer.store().metadata(&b.build_id)?;
    let ids: std::collections::BTreeSet<String> =
        consumed_of(&Child::of(b, &meta), plan, Some(upto))?
            .into_iter()
            .collect();
    for id in ids {
        refresh(writer, &id)?;
    }
    Ok(())
}

/// Bring the parent `id` up to date from the remote (remote mode). A parent whose copy
/// left the remote since this database saw it (archived or deleted elsewhere) is judged
/// by what this database last saw of it, rather than failing the child's decision.
fn refresh(writer: &mut Writer, id: &str) -> Result<()> {
    match writer.refresh(id) {
        Err(Error::RemoteChanged(_)) => Ok(()),
        other => other,
    }
}

/// The dependencies of `state` of `b` that do not hold now ([`crate::decide::gate`]
/// turns a go-ahead into `wait` on them).
pub fn unmet(writer: &mut Writer, b: &Build, plan: &Plan, state: Option<u8>) -> Result<Vec<Unmet>> {
    let Some(state) = state else {
        return Ok(Vec::new());
    };
    let mut parents = build_level(writer, &b.build_id)?;
    if plan.state(state).is_some_and(|d| !d.after.is_empty()) {
        let meta = writer.store().metadata(&b.build_id)?;
        parents.extend(parents_of(&Child::of(b, &meta), plan, state)?);
    }
    // The same dependency given twice (the plan's and --after) is waited for once.
    parents.sort();
    parents.dedup();
    let mut out = Vec::new();
    for (id, s) in parents {
        if let Some(u) = judge(&id, s, known(writer, &id, s)?.as_ref()) {
            out.push(u);
        }
    }
    Ok(out)
}

/// Refuse (exit 8) the new build `child` if it would wait for itself: a parent of one of
/// its states is itself, or waits (through its own plan, at any depth) for it. Parents
/// that do not exist yet are not followed: they may be created later (docs/plan.md).
pub fn refuse_cycles(
    writer: &mut Writer,
    child: &Child<'_>,
    plan: &Plan,
    after: &[String],
) -> Result<()> {
    let me = child.build_id;
    let start = vec![me.to_string()];
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<(String, Vec<String>)> = Vec::new();
    for s in &plan.states {
        for (id, _) in parents_of(child, plan, s.id)? {
            todo.push((id, start.clone()));
        }
    }
    for id in consumed_of(child, plan, None)? {
        todo.push((id, start.clone()));
    }
    // The builds `--after` names must exist: an id typed by hand is more often a typo
    // than a build to come (a plan's templates, shared by many builds, may wait).
    for text in after {
        let a = parse_after(text).map_err(|m| Error::InvalidInput(format!("--after {m}")))?;
        if a.build != me {
            refresh(writer, &a.build)?;
            let Some(p) = writer.store().build(&a.build)? else {
                let similar = crate::report::similar_builds(writer.store(), &a.build)?;
                return Err(Error::InvalidInput(format!(
                    "--after {text}: there is no build '{}'{}; create it first, or name it in the plan's after, where a build that does not exist yet is waited for; nothing was written",
                    a.build,
                    if similar.is_empty() { String::new() } else { format!(" (similar: {})", similar.join(", ")) }
                )));
            };
            let pplan = writer.store().plan(&p.plan_hash)?;
            if pplan.state(a.state).is_none() {
                let ids: Vec<String> = pplan.states.iter().map(|s| s.id.to_string()).collect();
                return Err(Error::InvalidInput(format!(
                    "--after {text}: build '{}' (plan '{}') has no state {}, so it would never complete it: its states are {}; nothing was written",
                    a.build,
                    pplan.name,
                    a.state,
                    ids.join(", ")
                )));
            }
        }
        todo.push((a.build, start.clone()));
    }
    while let Some((id, mut via)) = todo.pop() {
        via.push(id.clone());
        if id == me {
            return Err(Error::InvalidInput(format!(
                "build '{me}' would wait for itself: {}; a build cannot depend on its own states, directly or through others: change the plan's after (or the metadata its templates name); nothing was written",
                via.join(" waits for ")
            )));
        }
        if !seen.insert(id.clone()) || via.len() > 64 {
            continue;
        }
        refresh(writer, &id)?;
        let Some(p) = writer.store().build(&id)? else {
            continue;
        };
        for (n, _) in build_level(writer, &id)? {
            todo.push((n, via.clone()));
        }
        let pplan = writer.store().plan(&p.plan_hash)?;
        let pmeta = writer.store().metadata(&id)?;
        for s in &pplan.states {
            // A parent whose own templates do not resolve waits on nobody yet.
            let Ok(next) = parents_of(&Child::of(&p, &pmeta), &pplan, s.id) else {
                continue;
            };
            for (n, _) in next {
                todo.push((n, via.clone()));
            }
        }
        for n in consumed_of(&Child::of(&p, &pmeta), &pplan, None).unwrap_or_default() {
            todo.push((n, via.clone()));
        }
    }
    Ok(())
}

/// One edge of the graph: a parent `build_id`'s `state` that a build waits for, and
/// whether it holds now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Edge {
    pub build_id: String,
    pub state: u8,
    pub holds: bool,
    /// The parent's status, or `missing`.
    pub status: String,
}

/// A build of the graph: the builds it waits for and those that wait for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    pub build_id: String,
    pub status: String,
    pub current_state: Option<u8>,
    pub parents: Vec<Edge>,
    pub children: Vec<String>,
}

/// The part of `graph` about `id`: it, the builds it waits for and those that wait for
/// it, with only the edges that touch it (empty when it is in no dependency).
pub fn around(graph: Vec<Node>, id: &str) -> Vec<Node> {
    let Some(me) = graph.iter().find(|n| n.build_id == id) else {
        return Vec::new();
    };
    let near: std::collections::BTreeSet<String> = me
        .parents
        .iter()
        .map(|p| p.build_id.clone())
        .chain(me.children.iter().cloned())
        .chain([id.to_string()])
        .collect();
    graph
        .into_iter()
        .filter(|n| near.contains(&n.build_id))
        .map(|mut n| {
            let mine = n.build_id == id;
            n.parents.retain(|p| mine || p.build_id == id);
            n.children.retain(|c| mine || c == id);
            n
        })
        .collect()
}

/// The graph of every build that waits for another or is waited for, by id (its plan's
/// after, resolved for it, and its `--after`), from facts read at once: no read per
/// build. A template that does not resolve for a build is left out of its edges.
pub fn graph(facts: &crate::store::fleet::GraphFacts) -> Vec<Node> {
    use std::collections::BTreeMap;
    let by_id: std::collections::HashMap<&str, &Build> = facts
        .builds
        .iter()
        .map(|b| (b.build_id.as_str(), b))
        .collect();
    let empty = BTreeMap::new();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let node = |b: Option<&&Build>, id: &str| Node {
        build_id: id.to_string(),
        status: match b {
            Some(b) => b.status.to_string(),
            None => facts
                .archived
                .get(id)
                .map_or("missing".into(), |s| format!("archived {s}")),
        },
        current_state: b.and_then(|b| b.current_state),
        parents: Vec::new(),
        children: Vec::new(),
    };
    for b in &facts.builds {
        let mut wants: Vec<(String, u8)> = Vec::new();
        if let Some(plan) = facts.plans.get(&b.plan_hash) {
            let meta = facts.meta.get(&b.build_id).unwrap_or(&empty);
            let child = Child::of(b, meta);
            for s in &plan.states {
                wants.extend(parents_of(&child, plan, s.id).unwrap_or_default());
            }
        }
        for text in facts.after.get(&b.build_id).into_iter().flatten() {
            if let Ok(a) = parse_after(text) {
                wants.push((a.build, a.state));
            }
        }
        wants.sort();
        wants.dedup();
        for (pid, state) in wants {
            let parent = by_id.get(pid.as_str());
            // Judged as a child's decision judges it (`known`, `judge`), from the facts.
            let known = match parent {
                Some(p) => Some(Known {
                    status: p.status,
                    current_state: p.current_state,
                    state_name: facts
                        .plans
                        .get(&p.plan_hash)
                        .and_then(|pl| pl.state(state))
                        .map(|d| d.name.clone()),
                    revoked: facts.revoked.get(&pid).cloned(),
                    archived: false,
                }),
                None => facts.archived.get(&pid).map(|s| Known::archived(s, state)),
            };
            let holds = judge(&pid, state, known.as_ref()).is_none();
            nodes
                .entry(b.build_id.clone())
                .or_insert_with(|| node(Some(&b), &b.build_id))
                .parents
                .push(Edge {
                    build_id: pid.clone(),
                    state,
                    holds,
                    status: known.as_ref().map_or("missing".into(), Known::label),
                });
            let p = nodes
                .entry(pid.clone())
                .or_insert_with(|| node(parent, &pid));
            if !p.children.contains(&b.build_id) {
                p.children.push(b.build_id.clone());
            }
        }
    }
    nodes.into_values().collect()
}
