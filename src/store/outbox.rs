//! The alert outbox (the `alerts` table): alerts are queued here inside the same
//! transaction as the transition that raises them ([`crate::alerts`] computes which), so
//! that none is lost and a refused write raises none. Delivery is [`crate::notify`]'s.

use std::time::SystemTime;

use rusqlite::{named_params, Connection};

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
