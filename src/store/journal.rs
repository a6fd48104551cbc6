//! The journal of outcomes not yet shared with the remote (schema v9): a worker whose
//! command finished while the remote was away keeps the outcome here until it lands.
//! [`crate::sync::Writer`] writes and replays it; this module only stores it.

use std::time::SystemTime;

use rusqlite::named_params;

use super::Store;
use crate::{time, Result};

/// One journaled outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Journaled {
    pub id: i64,
    pub build_id: String,
    pub remote: String,
    pub write_id: String,
    /// The transition, as JSON (see `crate::sync`).
    pub outcome: String,
    pub owner: Option<String>,
    pub fence: Option<u32>,
    /// The actor, as JSON.
    pub actor: String,
    pub happened_at: SystemTime,
    pub journaled_at: SystemTime,
    pub last_error: Option<String>,
}

impl Store {
    /// Keep an outcome (durably: its own committed transaction) until it lands; its id.
    /// An outcome with the same write id is kept once (the id of the one kept).
    pub fn journal(&self, j: &Journaled) -> Result<i64> {
        self.conn.execute(
            "INSERT OR IGNORE INTO journal (build_id, remote, write_id, outcome, owner, fence, actor,
                                            happened_at, journaled_at, last_error)
             VALUES (:b, :r, :w, :o, :owner, :fence, :actor, :h, :j, :e)",
            named_params! {
                ":b": j.build_id, ":r": j.remote, ":w": j.write_id, ":o": j.outcome,
                ":owner": j.owner, ":fence": j.fence, ":actor": j.actor,
                ":h": time::format(j.happened_at), ":j": time::format(j.journaled_at),
                ":e": j.last_error.as_deref().map(|e| crate::redact::redact(e).into_owned()),
            },
        )?;
        Ok(self.conn.query_row(
            "SELECT id FROM journal WHERE write_id = :w",
            named_params! {":w": j.write_id},
            |r| r.get(0),
        )?)
    }

    /// The outcomes waiting for `remote` (every remote: `None`), oldest first; of one
    /// build only with `build_id`.
    pub fn journaled(
        &self,
        remote: Option<&str>,
        build_id: Option<&str>,
    ) -> Result<Vec<Journaled>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, build_id, remote, write_id, outcome, owner, fence, actor, happened_at,
                    journaled_at, last_error
             FROM journal WHERE (:r IS NULL OR remote = :r) AND (:b IS NULL OR build_id = :b)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(named_params! {":r": remote, ":b": build_id}, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<u32>>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, Option<String>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, build_id, remote, write_id, outcome, owner, fence, actor, h, j, e) = row?;
            out.push(Journaled {
                id,
                build_id,
                remote,
                write_id,
                outcome,
                owner,
                fence,
                actor,
                happened_at: time::parse(&h)?,
                journaled_at: time::parse(&j)?,
                last_error: e,
            });
        }
        Ok(out)
    }

    /// It landed (or was recorded as a late result): forget it.
    pub fn unjournal(&self, id: i64) -> Result<()> {
        self.conn.execute(
            "DELETE FROM journal WHERE id = :id",
            named_params! {":id": id},
        )?;
        Ok(())
    }

    /// Why the last try to land it failed.
    pub fn journal_error(&self, id: i64, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE journal SET last_error = :e WHERE id = :id",
            named_params! {":id": id, ":e": crate::redact::redact(error).into_owned()},
        )?;
        Ok(())
    }

    /// Whether the build's history holds a write with this id (it landed).
    pub fn has_write(&self, build_id: &str, write_id: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM events WHERE build_id = :b AND write_id = :w)",
            named_params! {":b": build_id, ":w": write_id},
            |r| r.get(0),
        )?)
    }
}
