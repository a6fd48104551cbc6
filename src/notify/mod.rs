//! Alerts: what people must hear about, queued in an outbox (the `alerts` table) inside
//! the same transaction as the transition that causes them, and delivered from there
//! ([`slack`]), so that a Slack outage neither blocks a pipeline nor loses an alert.
//!
//! Which kinds alert is configured in the plan (`alerts = [...]` for the whole plan, or
//! on a state); by default all of them do.

pub mod slack;

use std::time::{Duration, SystemTime};

use rusqlite::{named_params, Connection, OptionalExtension};

use crate::context::Actor;
use crate::model::{Build, Change, EventKind, Status};
use crate::plan::Plan;
pub use crate::policy::AlertKind;
use crate::{time, Result};

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

/// The alerts a transition causes, as the plan configures them.
pub fn for_change(before: &Build, change: &Change, plan: &Plan, actor: &Actor) -> Vec<NewAlert> {
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
    kinds
        .into_iter()
        .filter(|(k, _)| plan.alerts_for(state).contains(k))
        .map(|(kind, reason)| NewAlert {
            kind,
            build_id: Some(after.build_id.clone()),
            dedupe_key: format!("{}:{}:{}", after.build_id, after.serial, kind),
            payload: payload(kind, after, plan, actor, reason.as_deref()),
        })
        .collect()
}

/// Queue alerts (a dedupe key already queued is skipped). Called inside the write's
/// transaction.
pub fn enqueue(conn: &Connection, alerts: &[NewAlert], now: SystemTime) -> Result<usize> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO alerts (build_id, kind, dedupe_key, payload, next_try_at, created_at)
         VALUES (:build, :kind, :key, :payload, :now, :now)",
    )?;
    let mut n = 0;
    for a in alerts {
        n += stmt.execute(named_params! {
            ":build": a.build_id, ":kind": a.kind.as_str(), ":key": a.dedupe_key,
            ":payload": a.payload.to_string(), ":now": time::format(now),
        })?;
    }
    Ok(n)
}

/// An alert claimed for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub build_id: Option<String>,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempts: u32,
}

/// Claim the oldest due alert for `worker` until `until`: one statement, so two
/// deliverers never claim the same alert.
pub fn claim(
    conn: &Connection,
    worker: &str,
    now: SystemTime,
    until: SystemTime,
) -> Result<Option<Claimed>> {
    let row = conn
        .prepare_cached(
            "UPDATE alerts SET claimed_by = :me, claimed_until = :until
             WHERE id = (SELECT id FROM alerts
                         WHERE state = 'pending' AND next_try_at <= :now AND shared = 0
                           AND (claimed_until IS NULL OR claimed_until <= :now)
                         ORDER BY id LIMIT 1)
             RETURNING id, build_id, kind, payload, attempts",
        )?
        .query_row(
            named_params! {":me": worker, ":until": time::format(until), ":now": time::format(now)},
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, u32>(4)?,
                ))
            },
        )
        .optional()?;
    Ok(row.map(|(id, build_id, kind, payload, attempts)| Claimed {
        id,
        build_id,
        kind,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        attempts,
    }))
}

/// Remote mode: claim the oldest due alert that travels with its build (see
/// [`crate::store::Store`]'s `alerts.shared`), through the remote: the claim is written
/// into the build's shared record with compare-and-swap, so two machines delivering at
/// once never both hold it. Candidates come from the local copy, each refreshed first.
pub fn claim_shared(
    w: &mut crate::sync::Writer,
    worker: &str,
    now: SystemTime,
    until: SystemTime,
) -> Result<Option<Claimed>> {
    let candidates: Vec<(String, String)> = {
        let mut stmt = w.connection().prepare_cached(
            "SELECT build_id, dedupe_key FROM alerts
             WHERE state = 'pending' AND shared = 1 AND next_try_at <= :now
               AND (claimed_until IS NULL OR claimed_until <= :now) AND build_id IS NOT NULL
             ORDER BY id LIMIT 64",
        )?;
        let rows = stmt.query_map(named_params! {":now": time::format(now)}, |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (build, key) in candidates {
        let got = w.update_shared(&build, |conn| {
            let row = conn
                .prepare_cached(
                    "UPDATE alerts SET claimed_by = :me, claimed_until = :until
                     WHERE dedupe_key = :key AND state = 'pending' AND shared = 1
                       AND next_try_at <= :now
                       AND (claimed_until IS NULL OR claimed_until <= :now)
                     RETURNING id, build_id, kind, payload, attempts",
                )?
                .query_row(
                    named_params! {
                        ":me": worker, ":until": time::format(until), ":key": key,
                        ":now": time::format(now),
                    },
                    claimed_row,
                )
                .optional()?;
            let changed = row.is_some();
            Ok((row, changed))
        });
        match got {
            Ok(Some(c)) => return Ok(Some(c)),
            Ok(None) => {}
            // One build that cannot be read (deleted, forged) must not hold up the others.
            Err(e) => eprintln!("buildstate: warning: alert {key} is not delivered now: {e}"),
        }
    }
    Ok(None)
}

fn claimed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
    let payload: String = r.get(3)?;
    Ok(Claimed {
        id: r.get(0)?,
        build_id: r.get(1)?,
        kind: r.get(2)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        attempts: r.get(4)?,
    })
}

/// [`settle`] for an alert claimed with [`claim_shared`]: written through the remote.
pub fn settle_shared(
    w: &mut crate::sync::Writer,
    alert: &Claimed,
    worker: &str,
    outcome: Settle<'_>,
    now: SystemTime,
) -> Result<()> {
    let Some(build) = alert.build_id.clone() else {
        return Ok(());
    };
    w.update_shared(&build, |conn| {
        let n = settle(conn, alert.id, worker, outcome, now)?;
        Ok(((), n == 1))
    })
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy)]
pub enum Settle<'a> {
    Delivered,
    /// Try again at the time given; `counts`: whether this try uses up an attempt (a
    /// rate limit does not).
    Retry {
        at: SystemTime,
        error: &'a str,
        counts: bool,
    },
    GaveUp {
        error: &'a str,
    },
}

/// Record a delivery attempt's outcome and release the claim. Only the claimant may;
/// the number of alerts changed (0 when the claim was no longer this worker's).
pub fn settle(
    conn: &Connection,
    id: i64,
    worker: &str,
    outcome: Settle<'_>,
    now: SystemTime,
) -> Result<usize> {
    let (state, next, error, inc, delivered) = match outcome {
        Settle::Delivered => ("delivered", now, None, 1, Some(time::format(now))),
        Settle::Retry { at, error, counts } => {
            ("pending", at, Some(error), i32::from(counts), None)
        }
        Settle::GaveUp { error } => ("gave_up", now, Some(error), 1, None),
    };
    Ok(conn.execute(
        "UPDATE alerts SET state = :state, next_try_at = :next, last_error = :error,
            attempts = attempts + :inc, delivered_at = :delivered,
            claimed_by = NULL, claimed_until = NULL
         WHERE id = :id AND claimed_by = :me",
        named_params! {
            ":state": state, ":next": time::format(next),
            ":error": error.map(|e| crate::redact::redact(e).into_owned()),
            ":inc": inc, ":delivered": delivered, ":id": id, ":me": worker,
        },
    )?)
}

/// Forget delivered and given-up alerts older than `keep`.
pub fn prune(store: &crate::store::Store, keep: Duration, now: SystemTime) -> Result<usize> {
    let before = now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(store.connection().execute(
        "DELETE FROM alerts WHERE state != 'pending' AND created_at < :before",
        named_params! {":before": time::format(before)},
    )?)
}

/// Outbox depth and the age of the oldest pending alert, for metrics and status.
pub fn depth(conn: &Connection, now: SystemTime) -> Result<(u64, u64, Option<Duration>)> {
    let (pending, gave_up, oldest): (u64, u64, Option<String>) = conn.query_row(
        "SELECT COUNT(*) FILTER (WHERE state = 'pending'), COUNT(*) FILTER (WHERE state = 'gave_up'),
                MIN(created_at) FILTER (WHERE state = 'pending')
         FROM alerts",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let age = oldest
        .map(|t| time::parse(&t))
        .transpose()?
        .map(|t| now.duration_since(t).unwrap_or_default());
    Ok((pending, gave_up, age))
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
        let a = Actor::from_lookup("update-state", env);
        assert_eq!(
            concourse_url(&a).as_deref(),
            Some("https://ci.example.com/teams/main/pipelines/images/jobs/bake/builds/42")
        );
        assert_eq!(concourse_url(&Actor::from_lookup("t", |_| None)), None);
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("héllo", 10), "héllo");
    }
}
