//! Archiving in the store: which builds may go, removing one whole in one transaction
//! once its snapshot is safe on the remote, and remembering where it went. The history is
//! append-only; the one exception is this path, which opens `archive_gate` for one build
//! inside its own transaction (schema v7).

use std::collections::BTreeMap;
use std::time::SystemTime;

use rusqlite::{named_params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::Store;
use crate::{time, Error, Result};

/// Where an archived build went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Archived {
    pub build_id: String,
    pub lineage: String,
    pub serial: u64,
    pub status: String,
    /// The remote's name (no credentials).
    pub remote: String,
    /// The object's key under the remote's root.
    pub object: String,
    pub archived_at: String,
}

/// Why a build that matched was left in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Yes,
    /// It changed since its snapshot was archived (a new serial): archive it again later.
    Changed,
    /// It is not here any more (another run archived it).
    Gone,
}

impl Archived {
    /// The error that says where the build went.
    pub fn error(&self) -> Error {
        Error::Archived(Box::new(crate::error::ArchivedAt {
            build_id: self.build_id.clone(),
            serial: self.serial,
            status: self.status.clone(),
            remote: self.remote.clone(),
            object: self.object.clone(),
            at: self.archived_at.clone(),
        }))
    }
}

impl Store {
    /// Builds completed before `completed` or cancelled before `cancelled` (by their last
    /// write), oldest first. Their alerts stay in the outbox (rows of their own, delivered
    /// and pruned as before).
    pub fn archive_candidates(
        &self,
        completed: Option<SystemTime>,
        cancelled: Option<SystemTime>,
    ) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT build_id FROM builds
             WHERE (status = 'completed' AND updated_at < :completed)
                OR (status = 'cancelled' AND updated_at < :cancelled)
             ORDER BY updated_at, build_id",
        )?;
        let ids = stmt
            .query_map(
                named_params! {
                    ":completed": completed.map(time::format),
                    ":cancelled": cancelled.map(time::format),
                },
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// Builds holding task results recorded before `before` (retention), by id.
    pub fn builds_with_tasks_before(&self, before: SystemTime) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT DISTINCT build_id FROM events WHERE {OLD_TASKS} ORDER BY build_id"
        ))?;
        let ids = stmt
            .query_map(named_params! {":before": time::format(before)}, |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// Remove a build whose snapshot at `serial` is archived as `record` says, in one
    /// transaction: its events and metadata, then its summary; the record is kept, and so
    /// are its sync marks (a pull of an unchanged remote copy then skips it without
    /// fetching). Nothing is removed when the build changed since (another serial).
    pub fn remove_archived(&mut self, record: &Archived) -> Result<Removed> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let serial: Option<u64> = tx
            .query_row(
                "SELECT serial FROM builds WHERE build_id = :id",
                named_params! {":id": record.build_id},
                |r| r.get(0),
            )
            .optional()?;
        match serial {
            None => return Ok(Removed::Gone),
            Some(s) if s != record.serial => return Ok(Removed::Changed),
            Some(_) => {}
        }
        let id = named_params! {":id": record.build_id};
        let outputs = crate::outputs::values(&crate::outputs::current(&super::load_output_events(
            &tx,
            &record.build_id,
        )?));
        let outputs = serde_json::to_string(&outputs)
            .map_err(|e| Error::Corrupt(format!("outputs of '{}': {e}", record.build_id)))?;
        // What its events counted stays counted (metrics' counters never go backwards).
        tx.execute(
            &format!(
                "INSERT INTO metric_removed (metric, plan, state, n, sum_ms)
                 SELECT * FROM ({COUNTED}) WHERE true
                 ON CONFLICT (metric, plan, state)
                 DO UPDATE SET n = n + excluded.n, sum_ms = sum_ms + excluded.sum_ms"
            ),
            id,
        )?;
        remove_all_events(&tx, &record.build_id)?;
        tx.execute("DELETE FROM build_meta WHERE build_id = :id", id)?;
        tx.execute("DELETE FROM builds WHERE build_id = :id", id)?;
        tx.execute(
            "INSERT OR REPLACE INTO archived
                 (build_id, lineage, serial, status, remote, object, archived_at, outputs)
             VALUES (:id, :lineage, :serial, :status, :remote, :object, :at, :outputs)",
            named_params! {
                ":id": record.build_id, ":lineage": record.lineage, ":serial": record.serial,
                ":status": record.status, ":remote": record.remote, ":object": record.object,
                ":at": record.archived_at, ":outputs": outputs,
            },
        )?;
        tx.commit()?;
        Ok(Removed::Yes)
    }

    /// Where `build_id` was archived, if it was (and is not back).
    pub fn archived(&self, build_id: &str) -> Result<Option<Archived>> {
        archived_in(&self.conn, build_id)
    }

    /// The current outputs an archived build had when it left (none recorded: an empty
    /// map), or `None` when it is not archived.
    pub fn archived_outputs(&self, build_id: &str) -> Result<Option<BTreeMap<String, String>>> {
        let raw: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT outputs FROM archived WHERE build_id = :id",
                named_params! {":id": build_id},
                |r| r.get(0),
            )
            .optional()?;
        raw.map(|o| {
            o.map_or(Ok(BTreeMap::new()), |t| {
                serde_json::from_str(&t).map_err(|e| {
                    Error::Corrupt(format!("archive record of '{build_id}': outputs: {e}"))
                })
            })
        })
        .transpose()
    }

    /// Forget the archive record of a build that is back (unarchived).
    pub fn forget_archived(&self, build_id: &str) -> Result<()> {
        if self.build(build_id)?.is_none() {
            return Err(Error::UnknownBuild(build_id.to_string()));
        }
        let tx = self.conn.unchecked_transaction()?;
        let id = named_params! {":id": build_id};
        if tx.execute("DELETE FROM archived WHERE build_id = :id", id)? == 1 {
            // Its events count again from the history: what they counted while it was
            // away is taken back, so each counter stays what it was.
            tx.execute(
                &format!(
                    "UPDATE metric_removed AS m
                     SET n = MAX(0, m.n - c.n), sum_ms = MAX(0, m.sum_ms - c.sum_ms)
                     FROM ({COUNTED}) AS c
                     WHERE m.metric = c.metric AND m.plan = c.plan AND m.state = c.state"
                ),
                id,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The database file's size in bytes, WAL included, and whether `VACUUM` ran.
    pub fn size_bytes(&self) -> u64 {
        let main = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        main + std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    /// `VACUUM`: give the space of removed rows back to the file system (rewrites the
    /// whole database; only when asked). In WAL mode the rewritten database goes to the
    /// WAL first; `false`: another process was reading, so it could not be folded back
    /// yet, and the files are larger until that reader closes and a later write
    /// checkpoints.
    pub fn vacuum(&self) -> Result<bool> {
        // A TRUNCATE checkpoint waits for readers through the busy handler: a reader that
        // stays would hold this for the whole busy timeout, twice. Wait a second at most.
        let checkpoint = || -> Result<bool> {
            self.conn.busy_timeout(std::time::Duration::from_secs(1))?;
            let got = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                });
            self.conn.busy_timeout(self.busy_timeout)?;
            let (busy, log, done) = got?;
            Ok(busy == 0 && log == done)
        };
        checkpoint()?;
        self.conn.execute_batch("VACUUM")?;
        checkpoint()
    }
}

/// What the events of build `:id` add to the counters `monitor metrics` exports, per
/// metric, plan name and state (-1: none): retries (starts after a state's first) and the
/// durations of completed states. [`Store::metric_counters`] counts the same.
pub(super) const COUNTED: &str = "
    SELECT 'retries' AS metric, p.name AS plan, COALESCE(e.state, -1) AS state,
           COUNT(*) AS n, 0 AS sum_ms
    FROM events e JOIN builds b ON b.build_id = e.build_id JOIN plans p ON p.hash = b.plan_hash
    WHERE e.build_id = :id AND e.kind = 'start' AND e.attempt > 1
    GROUP BY 2, 3
    UNION ALL
    SELECT 'duration', p.name, COALESCE(e.state, -1), COUNT(*), COALESCE(SUM(e.duration_ms), 0)
    FROM events e JOIN builds b ON b.build_id = e.build_id JOIN plans p ON p.hash = b.plan_hash
    WHERE e.build_id = :id AND e.kind = 'complete' AND e.duration_ms IS NOT NULL
    GROUP BY 2, 3";

/// Which events retention removes: task results recorded before `:before`. Counting,
/// finding and removing them must agree, so all three use this.
const OLD_TASKS: &str = "kind = 'task' AND at < :before";

/// How many task results of `build_id` were recorded before `before` (retention).
pub(super) fn old_tasks(
    conn: &rusqlite::Connection,
    build_id: &str,
    before: SystemTime,
) -> Result<u64> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM events WHERE build_id = :id AND {OLD_TASKS}"
        ))?
        .query_row(
            named_params! {":id": build_id, ":before": time::format(before)},
            |r| r.get(0),
        )?)
}

/// Remove the `count` task results [`old_tasks`] counted, inside the caller's
/// transaction (which has just appended the `pruned` event that says so): the history's
/// one other way out besides archiving, through the same gate.
pub(super) fn prune_tasks(
    conn: &rusqlite::Connection,
    build_id: &str,
    before: SystemTime,
    count: u64,
) -> Result<()> {
    remove_events(conn, build_id, &|conn| {
        let n = conn.execute(
            &format!("DELETE FROM events WHERE build_id = :id AND {OLD_TASKS}"),
            named_params! {":id": build_id, ":before": time::format(before)},
        )?;
        if n as u64 != count {
            return Err(Error::Corrupt(format!(
                "build '{build_id}': counted {count} old task results but found {n} to remove; nothing was written"
            )));
        }
        Ok(())
    })
}

/// Run `delete` with the append-only gate open for `build_id` (schema v7): the
/// caller's transaction opens and closes it, so no other write ever sees it open.
pub(super) fn remove_events(
    conn: &rusqlite::Connection,
    build_id: &str,
    delete: &dyn Fn(&rusqlite::Connection) -> Result<()>,
) -> Result<()> {
    let id = named_params! {":id": build_id};
    conn.execute("INSERT INTO archive_gate (build_id) VALUES (:id)", id)?;
    delete(conn)?;
    conn.execute("DELETE FROM archive_gate WHERE build_id = :id", id)?;
    Ok(())
}

/// Remove every event of `build_id` through the gate (archiving it, or a person's
/// choice of the remote copy replacing it), inside the caller's transaction.
pub(super) fn remove_all_events(conn: &rusqlite::Connection, build_id: &str) -> Result<()> {
    remove_events(conn, build_id, &|conn| {
        conn.execute(
            "DELETE FROM events WHERE build_id = :id",
            named_params! {":id": build_id},
        )?;
        Ok(())
    })
}

/// [`Store::archived`] on a connection (or transaction) of the caller's.
pub(super) fn archived_in(conn: &rusqlite::Connection, build_id: &str) -> Result<Option<Archived>> {
    Ok(conn
        .prepare_cached(
            "SELECT build_id, lineage, serial, status, remote, object, archived_at
             FROM archived WHERE build_id = :id",
        )?
        .query_row(named_params! {":id": build_id}, |r| {
            Ok(Archived {
                build_id: r.get(0)?,
                lineage: r.get(1)?,
                serial: r.get(2)?,
                status: r.get(3)?,
                remote: r.get(4)?,
                object: r.get(5)?,
                archived_at: r.get(6)?,
            })
        })
        .optional()?)
}

/// The error for a build that is not here: where it went if it was archived, else
/// unknown.
pub(super) fn missing(conn: &rusqlite::Connection, build_id: &str) -> Error {
    match archived_in(conn, build_id) {
        Ok(Some(a)) => a.error(),
        Ok(None) => Error::UnknownBuild(build_id.to_string()),
        Err(e) => e,
    }
}

/// One exported counter: its metric ('retries' or 'duration'), plan name, state (`None`:
/// an event without one), count and (durations) the sum in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub metric: String,
    pub plan: String,
    pub state: Option<u8>,
    pub n: u64,
    pub sum_ms: u64,
}

impl Store {
    /// The counters `monitor metrics` exports: what the history holds, plus what builds
    /// that left it (archived) had counted. Never lower than before, whatever is archived,
    /// unarchived or pruned. By metric, plan and state.
    pub fn metric_counters(&self) -> Result<Vec<Counter>> {
        // One pass over the starts and completions in key order, each build's plan
        // looked up when the build changes: a GROUP BY build and state in SQL sorts a
        // million rows and took twice as long (docs/performance.md).
        // Plans by number (see `names`), so that counting an event allocates nothing.
        let mut names: Vec<String> = Vec::new();
        let mut plans: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT b.build_id, p.name FROM builds b JOIN plans p ON p.hash = b.plan_hash",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, name) = row?;
                let n = names.iter().position(|x| *x == name).unwrap_or_else(|| {
                    names.push(name);
                    names.len() - 1
                });
                plans.insert(id, n);
            }
        }
        // (metric, plan, state) -> (n, sum_ms); state -1: none.
        let mut acc: std::collections::HashMap<(bool, usize, i64), (u64, u64)> =
            std::collections::HashMap::new();
        let mut stmt = self.conn.prepare(
            "SELECT build_id, kind = 'start', state, duration_ms FROM events
             WHERE (kind = 'start' AND attempt > 1)
                OR (kind = 'complete' AND duration_ms IS NOT NULL)",
        )?;
        let mut rows = stmt.query([])?;
        let mut current: (String, usize) = (String::new(), usize::MAX);
        while let Some(r) = rows.next()? {
            let id = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            if id != current.0 {
                current = (id.to_string(), plans.get(id).copied().unwrap_or(usize::MAX));
            }
            let start: bool = r.get(1)?;
            let state: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(-1);
            let e = acc.entry((start, current.1, state)).or_default();
            e.0 += 1;
            if !start {
                e.1 += r.get::<_, Option<u64>>(3)?.unwrap_or(0);
            }
        }
        let mut stmt = self
            .conn
            .prepare("SELECT metric, plan, state, n, sum_ms FROM metric_removed")?;
        let removed = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, u64>(3)?,
                r.get::<_, u64>(4)?,
            ))
        })?;
        let mut out: std::collections::BTreeMap<(&'static str, String, i64), (u64, u64)> =
            std::collections::BTreeMap::new();
        let metric = |retries: bool| if retries { "retries" } else { "duration" };
        for ((retries, plan, state), (n, sum_ms)) in acc {
            let plan = names.get(plan).cloned().unwrap_or_default();
            let e = out.entry((metric(retries), plan, state)).or_default();
            e.0 += n;
            e.1 += sum_ms;
        }
        for row in removed {
            let (m, plan, state, n, sum_ms) = row?;
            let e = out
                .entry((metric(m == "retries"), plan, state))
                .or_default();
            e.0 += n;
            e.1 += sum_ms;
        }
        Ok(out
            .into_iter()
            .map(|((metric, plan, state), (n, sum_ms))| Counter {
                metric: metric.to_string(),
                plan,
                state: u8::try_from(state).ok(),
                n,
                sum_ms,
            })
            .collect())
    }
}
