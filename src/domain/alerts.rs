//! Which alerts a transition raises, and the facts each carries: pure, computed inside
//! the write's transaction by the store (which queues them in its outbox, see
//! `store::outbox`) and delivered later by `notify`. The alert kinds
//! a plan raises are configured in it (`alerts = [...]`).

use crate::context::Actor;
use crate::model::{Build, Change, EventKind, Status};
use crate::plan::Plan;
use crate::policy::AlertKind;
use crate::time;

/// An alert about to be queued.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub kind: AlertKind,
    pub build_id: Option<String>,
    /// The same key is queued once: a repeated cause does not alert twice.
    pub dedupe_key: String,
    /// The facts a message is made of, already redacted (no secret ever gets here).
    pub payload: serde_json::Value,
}

/// The last `max` characters of a (redacted) error message, on a char boundary.
pub fn tail(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        text.to_string()
    } else {
        format!("…{}", text.chars().skip(n - max).collect::<String>())
    }
}

/// The Concourse build page, when the actor ran inside Concourse.
pub fn concourse_url(actor: &Actor) -> Option<String> {
    let c = &actor.context;
    if let Some(u) = c.get("BUILD_URL") {
        return Some(u.clone());
    }
    let get = |k: &str| c.get(k);
    Some(format!(
        "{}/teams/{}/pipelines/{}/jobs/{}/builds/{}",
        get("ATC_EXTERNAL_URL")?.trim_end_matches('/'),
        get("BUILD_TEAM_NAME")?,
        get("BUILD_PIPELINE_NAME")?,
        get("BUILD_JOB_NAME")?,
        get("BUILD_NAME")?
    ))
}

/// The facts of an alert about `b`.
pub fn payload(
    kind: AlertKind,
    b: &Build,
    plan: &Plan,
    actor: &Actor,
    reason: Option<&str>,
) -> serde_json::Value {
    let state = match kind {
        AlertKind::Completed | AlertKind::Rollback => b.current_state,
        _ => b.active_state.or(b.current_state),
    };
    serde_json::json!({
        "kind": kind.as_str(),
        "build_id": b.build_id,
        "cloud": b.cloud,
        "image": b.image,
        "serial": b.serial,
        "state": state,
        "state_name": state.and_then(|s| plan.state(s)).map(|s| s.name.clone()),
        "attempt": (b.attempt > 0).then_some(b.attempt),
        "max_attempts": b.active_state.map(|s| crate::model::attempts_allowed(b, plan, s)),
        "category": b.last_category.map(|c| c.as_str()),
        "reason": reason,
        "error_tail": b.last_error.as_deref().map(|e| tail(e, 1500)),
        "who": actor.summary(),
        "host": actor.host,
        "concourse_url": concourse_url(actor),
        "at": time::format(b.updated_at),
    })
}

/// A payload about something other than the running attempt (a drift, a cleanup): the
/// attempt's facts would mislead.
fn not_about_an_attempt(p: &mut serde_json::Value) {
    for k in ["attempt", "max_attempts", "category"] {
        p[k] = serde_json::Value::Null;
    }
}

/// The alerts a transition causes, as the plan configures them.
pub fn for_change(
    before: &Build,
    change: &Change,
    t: &crate::model::Transition,
    plan: &Plan,
    actor: &Actor,
) -> Vec<NewAlert> {
    let after = &change.build;
    let mut kinds = Vec::new();
    let became = |s: Status| after.status == s && before.status != s;
    if became(Status::Blocked) {
        kinds.push((AlertKind::Blocked, after.blocked_reason.clone()));
    }
    if became(Status::Completed) {
        kinds.push((AlertKind::Completed, None));
    }
    if became(Status::Cancelled) {
        let why = change.events.iter().find(|e| e.kind == EventKind::Cancel);
        kinds.push((AlertKind::Cancelled, why.and_then(|e| e.message.clone())));
    }
    for e in &change.events {
        match e.kind {
            EventKind::Rollback => kinds.push((AlertKind::Rollback, e.message.clone())),
            EventKind::Takeover => kinds.push((AlertKind::Takeover, e.message.clone())),
            _ => {}
        }
    }
    let state = after
        .active_state
        .or(after.current_state)
        .unwrap_or_default();
    let mut alerts: Vec<NewAlert> = kinds
        .into_iter()
        .filter(|(k, _)| plan.alerts_for(state).contains(k))
        .map(|(kind, reason)| NewAlert {
            kind,
            build_id: Some(after.build_id.clone()),
            dedupe_key: format!("{}:{}:{}", after.build_id, after.serial, kind),
            payload: payload(kind, after, plan, actor, reason.as_deref()),
        })
        .collect();
    // A cleanup that failed every try of a collection: once per resource, since the
    // next collections try it again and would otherwise alert at each cron run.
    if let crate::model::Transition::Resource {
        op: crate::resources::Op::CleanupFailed { rtype, id, message },
        ..
    } = t
    {
        if plan.alerts_for(state).contains(&AlertKind::Cleanup) {
            let mut p = payload(AlertKind::Cleanup, after, plan, actor, None);
            p["reason"] = format!(
                "the cleanup of {rtype} {id} failed every try: it is probably still there, costing money; `monitor gc` tries again at its next run, or delete it by hand and record `update-state {} resource delete {rtype} {id}`",
                after.build_id
            )
            .into();
            p["resource_type"] = rtype.as_str().into();
            p["resource_id"] = id.as_str().into();
            p["error_tail"] = tail(message, 1500).into();
            not_about_an_attempt(&mut p);
            alerts.push(NewAlert {
                kind: AlertKind::Cleanup,
                build_id: Some(after.build_id.clone()),
                dedupe_key: format!("{}:{}:cleanup:{rtype}:{id}", after.build_id, after.lineage),
                payload: p,
            });
        }
    }
    // A drift alerts once per drift: keyed by the state's completion or last pass, not
    // by this write, so the next cron run that finds the same drift adds nothing.
    if let crate::model::Transition::Verified { results } = t {
        for r in results.iter().filter(|r| r.ran && !r.ok) {
            if !plan.alerts_for(r.state).contains(&AlertKind::Drift) {
                continue;
            }
            let mut p = payload(AlertKind::Drift, after, plan, actor, None);
            p["state"] = r.state.into();
            p["state_name"] = plan.state(r.state).map(|s| s.name.clone()).into();
            p["reason"] = format!(
                "the verify of {} failed: its result no longer holds; it reruns from there",
                plan.label(r.state)
            )
            .into();
            p["error_tail"] = tail(&crate::redact::redact(&r.message), 1500).into();
            not_about_an_attempt(&mut p);
            alerts.push(NewAlert {
                kind: AlertKind::Drift,
                build_id: Some(after.build_id.clone()),
                dedupe_key: format!(
                    "{}:{}:{}:drift:{}",
                    after.build_id, after.lineage, r.state, r.since
                ),
                payload: p,
            });
        }
    }
    alerts
}

/// A build whose completed `state` consumed some of a parent's outputs (`inputs.builds`):
/// by key, the value it was built on.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub build: Build,
    pub plan: Plan,
    pub state: u8,
    pub outputs: Vec<(String, String)>,
    /// The state is running on them now (not completed yet).
    pub running: bool,
}

/// The alert a consumer gets when `parent` (as written by the revocation) withdraws the
/// outputs it was built on; once per revocation. `None` when its plan does not raise
/// `revoked` alerts for that state.
pub fn revoked(c: &Consumer, parent: &Build, reason: &str, actor: &Actor) -> Option<NewAlert> {
    if !c.plan.alerts_for(c.state).contains(&AlertKind::Revoked) {
        return None;
    }
    let b = &c.build;
    let mut p = payload(AlertKind::Revoked, b, &c.plan, actor, None);
    let built_on = c
        .outputs
        .iter()
        .map(|(k, v)| format!("{k} '{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    p["state"] = c.state.into();
    p["state_name"] = c.plan.state(c.state).map(|s| s.name.clone()).into();
    let (what, then) = if c.running {
        ("is running on", "it will be stale when it ends")
    } else {
        ("was built on", "so it is stale")
    };
    p["reason"] = format!(
        "build {} revoked its outputs ({}): {} {what} {built_on}, {then}; it reruns from there once {} has made new ones",
        parent.build_id,
        crate::redact::redact(reason),
        c.plan.label(c.state),
        parent.build_id
    )
    .into();
    p["parent"] = parent.build_id.clone().into();
    p["at"] = time::format(parent.updated_at).into();
    not_about_an_attempt(&mut p);
    Some(NewAlert {
        kind: AlertKind::Revoked,
        build_id: Some(b.build_id.clone()),
        dedupe_key: format!(
            "{}:{}:revoked:{}:{}",
            b.build_id, b.lineage, parent.build_id, parent.serial
        ),
        payload: p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concourse_links_and_tails() {
        let env = |k: &str| match k {
            "ATC_EXTERNAL_URL" => Some("https://ci.example.com/".to_string()),
            "BUILD_TEAM_NAME" => Some("main".to_string()),
            "BUILD_PIPELINE_NAME" => Some("images".to_string()),
            "BUILD_JOB_NAME" => Some("bake".to_string()),
            "BUILD_NAME" => Some("42".to_string()),
            _ => None,
        };
        let a = Actor::from_lookup("update-state", "test-host", 0, env);
        assert_eq!(
            concourse_url(&a).as_deref(),
            Some("https://ci.example.com/teams/main/pipelines/images/jobs/bake/builds/42")
        );
        assert_eq!(
            concourse_url(&Actor::from_lookup("t", "test-host", 0, |_| None)),
            None
        );
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("héllo", 10), "héllo");
    }
}
