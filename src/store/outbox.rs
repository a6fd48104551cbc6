//! The alert outbox (the `alerts` table): alerts are queued here inside the same
//! transaction as the transition that raises them ([`crate::alerts`] computes which), so
//! that none is lost and a refused write raises none; claimed, settled and pruned here
//! too, so that every statement about alerts is in this one module. Delivery (what to
//! send, when, through which remote) is [`crate::notify`]'s.

use std::time::{Duration, SystemTime};

use rusqlite::{named_params, Connection, OptionalExtension};

use super::Store;
use crate::alerts::NewAlert;
use crate::{time, Result};

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

/// [`enqueue`] on its own, outside a write (`monitor check`'s stuck alerts).
pub fn queue(store: &Store, alerts: &[NewAlert], now: SystemTime) -> Result<usize> {
    enqueue(&store.conn, alerts, now)
}

/// Remote mode, inside a write: the build's pending alerts travel with it from now on
/// (claimed and settled through the remote by whichever machine delivers them).
pub fn share_pending(conn: &Connection, build_id: &str) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE alerts SET shared = 1 WHERE build_id = :id AND shared = 0 AND state = 'pending'",
        named_params! {":id": build_id},
    )?)
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

/// Whether an alert is due and unclaimed: what [`claim`] (and, with `shared`,
/// `notify::claim_shared`) would find. Asked before waiting out Slack's gap between two
/// messages, so that a command that sent its one alert does not then wait for nothing.
pub fn any_due(store: &Store, now: SystemTime, shared: bool) -> Result<bool> {
    Ok(store
        .conn
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
    store: &Store,
    worker: &str,
    now: SystemTime,
    until: SystemTime,
) -> Result<Option<Claimed>> {
    let row = store
        .conn
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

/// Remote mode: the due, unclaimed alerts that travel with their builds, oldest first (at
/// most 64): the build and the alert's dedupe key.
pub fn shared_candidates(store: &Store, now: SystemTime) -> Result<Vec<(String, String)>> {
    let mut stmt = store.conn.prepare_cached(
        "SELECT build_id, dedupe_key FROM alerts
         WHERE state = 'pending' AND shared = 1 AND next_try_at <= :now
           AND (claimed_until IS NULL OR claimed_until <= :now) AND build_id IS NOT NULL
         ORDER BY id LIMIT 64",
    )?;
    let rows = stmt.query_map(named_params! {":now": time::format(now)}, |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Claim the shared alert `key` for `worker` until `until`, if it is still due and
/// unclaimed: inside the write that carries the claim to the remote.
pub fn claim_by_key(
    conn: &Connection,
    worker: &str,
    key: &str,
    now: SystemTime,
    until: SystemTime,
) -> Result<Option<Claimed>> {
    Ok(conn
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
        .optional()?)
}

/// How many alerts are due now (`shared`: those that travel with builds too).
pub fn due(store: &Store, now: SystemTime, shared: bool) -> Result<u64> {
    Ok(store.conn.query_row(
        "SELECT COUNT(*) FROM alerts WHERE state = 'pending' AND next_try_at <= :now
           AND (shared = 0 OR :shared)",
        named_params! {":now": time::format(now), ":shared": shared},
        |r| r.get(0),
    )?)
}

/// How many alerts the outbox holds, by delivery state: pending, delivered, given up.
pub fn counts(store: &Store) -> Result<(u64, u64, u64)> {
    Ok(store.conn.query_row(
        "SELECT COUNT(*) FILTER (WHERE state = 'pending'), COUNT(*) FILTER (WHERE state = 'delivered'),
                COUNT(*) FILTER (WHERE state = 'gave_up') FROM alerts",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}

/// The Slack thread of the build's earlier alerts in `channel`, if any.
pub fn thread(store: &Store, build_id: &str, channel: &str) -> Result<Option<String>> {
    Ok(store
        .conn
        .query_row(
            "SELECT thread_ts FROM slack_threads WHERE build_id = :b AND channel = :c",
            named_params! {":b": build_id, ":c": channel},
            |r| r.get(0),
        )
        .optional()?)
}

/// Remember the thread of the build's first alert in `channel`.
pub fn record_thread(store: &Store, build_id: &str, channel: &str, ts: &str) -> Result<()> {
    store.conn.execute(
        "INSERT OR IGNORE INTO slack_threads (build_id, channel, thread_ts) VALUES (:b, :c, :t)",
        named_params! {":b": build_id, ":c": channel, ":t": ts},
    )?;
    Ok(())
}

pub fn claimed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
    let payload: String = r.get(3)?;
    Ok(Claimed {
        id: r.get(0)?,
        build_id: r.get(1)?,
        kind: r.get(2)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        attempts: r.get(4)?,
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

/// [`settle`] of an alert in this database's own outbox.
pub fn settle_local(
    store: &Store,
    id: i64,
    worker: &str,
    outcome: Settle<'_>,
    now: SystemTime,
) -> Result<()> {
    settle(&store.conn, id, worker, outcome, now).map(|_| ())
}

/// Forget delivered and given-up alerts older than `keep`.
pub fn prune(store: &Store, keep: Duration, now: SystemTime) -> Result<usize> {
    let before = time::ago(now, keep);
    Ok(store.conn.execute(
        "DELETE FROM alerts WHERE state != 'pending' AND created_at < :before",
        named_params! {":before": time::format(before)},
    )?)
}

/// Outbox depth and the age of the oldest pending alert, for metrics and status.
pub fn depth(store: &Store, now: SystemTime) -> Result<(u64, u64, Option<Duration>)> {
    let (pending, gave_up, oldest): (u64, u64, Option<String>) = store.conn.query_row(
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

    #[test]
    fn delivered_and_given_up_alerts_follow_their_retention_pending_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let actor = Actor::from_lookup("test", "test-host", 0, |_| None);
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
        let conn = &store.conn;
        let until = now + Duration::from_secs(60);
        let outcomes = [
            Settle::Delivered,
            Settle::GaveUp { error: "404" },
            Settle::Delivered,
        ];
        for outcome in outcomes {
            let c = claim(&store, "w", now, until).unwrap().unwrap();
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
