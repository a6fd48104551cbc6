//! Alerts: what people must hear about, queued in an outbox (the `alerts` table) inside
//! the same transaction as the transition that causes them, and delivered from there
//! ([`slack`]), so that a Slack outage neither blocks a pipeline nor loses an alert.
//!
//! Which kinds alert is configured in the plan (`alerts = [...]` for the whole plan, or
//! on a state); by default all of them do.

pub mod slack;

use std::time::{Duration, SystemTime};

use rusqlite::{named_params, Connection, OptionalExtension};

pub use crate::alerts::{concourse_url, for_change, payload, tail, NewAlert};
pub use crate::policy::AlertKind;
pub use crate::store::outbox::enqueue;
use crate::{time, Result};

/// An alert claimed for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub build_id: Option<String>,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempts: u32,
}

/// Whether an alert is due and unclaimed: what [`claim`] (and, with `shared`,
/// [`claim_shared`]) would find. Asked before waiting out Slack's gap between two
/// messages, so that a command that sent its one alert does not then wait for nothing.
pub fn any_due(conn: &Connection, now: SystemTime, shared: bool) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM alerts
               WHERE state = 'pending' AND next_try_at <= :now AND (shared = 0 OR :shared)
                 AND (claimed_until IS NULL OR claimed_until <= :now))",
        )?
        .query_row(
            named_params! {":now": time::format(now), ":shared": shared},
            |r| r.get(0),
        )?)
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
    let before = time::ago(now, keep);
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
    use crate::context::Actor;
    use crate::model::{Ctx, InitRequest, Transition};
    use crate::store::Store;

    #[test]
    fn delivered_and_given_up_alerts_follow_their_retention_pending_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let actor = Actor::from_env("test");
        let now = SystemTime::now();
        let old = now - Duration::from_secs(40 * 86_400);
        // One cancelled-build alert each, raised 40 days ago or now, in this order.
        for (id, at) in [
            ("old-sent", old),
            ("old-gave-up", old),
            ("new-sent", now),
            ("old-due", old),
        ] {
            store.init(&InitRequest::sample(id), &actor, at).unwrap();
            let cancel = Transition::Cancel {
                reason: "stop".into(),
            };
            store.transition(id, &cancel, &actor, &Ctx::at(at)).unwrap();
        }
        let conn = store.connection();
        let until = now + Duration::from_secs(60);
        let outcomes = [
            Settle::Delivered,
            Settle::GaveUp { error: "404" },
            Settle::Delivered,
        ];
        for outcome in outcomes {
            let c = claim(conn, "w", now, until).unwrap().unwrap();
            assert_eq!(settle(conn, c.id, "w", outcome, now).unwrap(), 1);
        }
        assert_eq!(
            prune(&store, Duration::from_secs(30 * 86_400), now).unwrap(),
            2
        );
        let left: Vec<(String, String)> = conn
            .prepare("SELECT build_id, state FROM alerts ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let want = [("new-sent", "delivered"), ("old-due", "pending")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(left, want);
    }
}
