//! Export and import of build snapshots ([`crate::snapshot`]), and what the store
//! remembers about each remote copy (the ETag and serial last seen), each in one
//! transaction.

use std::collections::BTreeMap;

use rusqlite::{named_params, OptionalExtension, TransactionBehavior};

use super::{insert_build, load_build, load_events, load_plan, update_summary, Store};
use crate::model::{Build, Event};
use crate::snapshot::{last_seq, AlertEntry, Histories, MetaEntry, Snapshot};
use crate::{time, Error, Result};

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The build was not here: created from the snapshot.
    Created { serial: u64 },
    /// The local history was a prefix of the snapshot's: the new events were appended.
    FastForward { from: u64, to: u64 },
    /// Same history: nothing to do.
    UpToDate { serial: u64 },
    /// The local history is ahead of the snapshot (which is a prefix of it): nothing to
    /// pull; push instead.
    LocalAhead { local: u64, remote: u64 },
    /// `take_remote`: the local history was replaced by the snapshot's.
    Replaced { from: u64, to: u64 },
}

/// A build's sync mark for one remote, beside what this database holds of the build:
/// its serial and lineage here, or as archived from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub mark: RemoteMark,
    pub serial: u64,
    pub lineage: String,
    pub archived: bool,
}

/// The last remote copy this database saw of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMark {
    pub etag: String,
    pub serial: u64,
    pub lineage: String,
}

impl Store {
    /// The build as a snapshot, read in one transaction.
    pub fn snapshot(&self, build_id: &str) -> Result<Snapshot> {
        let tx = self.conn.unchecked_transaction()?;
        let snap = snapshot_in(&tx, build_id)?;
        tx.finish()?;
        Ok(snap)
    }

    /// Import a validated snapshot: create the build, fast-forward it, or find it up to
    /// date or ahead. A different lineage or a divergent history is refused with
    /// [`Error::Diverged`] and nothing is written, unless `take_remote`, which replaces
    /// the local build (history included) by the snapshot's: a person's choice.
    pub fn import(&mut self, snap: &Snapshot, take_remote: bool) -> Result<Imported> {
        snap.validate()?;
        let id = &snap.build_id;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let local = load_build(&tx, id)?;
        let outcome = match &local {
            None => {
                write_whole(&tx, snap)?;
                Imported::Created {
                    serial: snap.serial,
                }
            }
            Some(l) => {
                let events = load_events(&tx, id)?;
                let same_lineage = l.lineage == snap.lineage;
                let compared = crate::snapshot::compare(&events, &snap.events);
                let shared = same_lineage && compared.agree();
                let (here, there) = (last_seq(&events), last_seq(&snap.events));
                if shared && l.serial == snap.serial && here == there {
                    // The same history; the lease holder may have renewed its lease
                    // through the remote since (a heartbeat is not a new serial).
                    let renewed = snap.build.lease_owner.is_some()
                        && snap.build.lease_owner == l.lease_owner
                        && snap.build.attempt == l.attempt
                        && snap.build.lease_expires_at > l.lease_expires_at;
                    if renewed {
                        tx.execute(
                            "UPDATE builds SET lease_expires_at = :until WHERE build_id = :id",
                            named_params! {
                                ":until": snap.build.lease_expires_at.map(time::format),
                                ":id": id,
                            },
                        )?;
                    }
                    Imported::UpToDate { serial: l.serial }
                } else if shared && l.serial > snap.serial {
                    Imported::LocalAhead {
                        local: l.serial,
                        remote: snap.serial,
                    }
                } else if shared && l.serial < snap.serial {
                    if let Histories::Agree { pruned_there } = &compared {
                        prune_as_there(&tx, id, pruned_there)?;
                    }
                    append_from(&tx, snap, l, here)?;
                    Imported::FastForward {
                        from: l.serial,
                        to: snap.serial,
                    }
                } else if take_remote {
                    // Events are append-only for every other write; this one person's
                    // choice opens the gate for one build, inside this transaction (as
                    // archiving does, schema v7).
                    let gate = named_params! {":id": id};
                    super::archive::remove_all_events(&tx, id)?;
                    for table in ["build_meta", "remote_sync"] {
                        tx.execute(&format!("DELETE FROM {table} WHERE build_id = :id"), gate)?;
                    }
                    tx.execute(
                        "DELETE FROM builds WHERE build_id = :id",
                        named_params! {":id": id},
                    )?;
                    write_whole(&tx, snap)?;
                    Imported::Replaced {
                        from: l.serial,
                        to: snap.serial,
                    }
                } else {
                    let why = if same_lineage {
                        format!(
                            "the histories diverged (local serial {}, remote serial {}, first different event: seq {})",
                            l.serial,
                            snap.serial,
                            match compared {
                                Histories::Differ { at } => at,
                                Histories::Agree { .. } => here.min(there) + 1,
                            }
                        )
                    } else {
                        format!(
                            "the remote copy is a different build with the same id (lineage {} here, {} there)",
                            l.lineage, snap.lineage
                        )
                    };
                    return Err(Error::Diverged(format!(
                        "build '{id}': {why}; nothing was written. Choose a side: `sync-cloud pull {id} --take-remote` replaces the local build, `sync-cloud push {id} --force` replaces the remote copy"
                    )));
                }
            }
        };
        merge_alerts(&tx, snap)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// The ETag and serial of `build_id` on `remote` when this database last wrote or
    /// read it.
    pub fn remote_mark(&self, remote: &str, build_id: &str) -> Result<Option<RemoteMark>> {
        remote_mark_in(&self.conn, remote, build_id)
    }

    pub fn set_remote_mark(
        &mut self,
        remote: &str,
        build_id: &str,
        mark: &RemoteMark,
    ) -> Result<()> {
        set_remote_mark_in(&self.conn, remote, build_id, mark)
    }

    /// For every build synced with `remote`: its mark and what this database holds of it,
    /// in one query: what `pull --all` compares with a listing to skip unchanged builds.
    pub fn remote_marks(&self, remote: &str) -> Result<BTreeMap<String, Marked>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.build_id, r.etag, r.serial, r.lineage,
                    COALESCE(b.serial, a.serial), COALESCE(b.lineage, a.lineage),
                    b.build_id IS NULL
             FROM remote_sync r
             LEFT JOIN builds b ON b.build_id = r.build_id
             LEFT JOIN archived a ON a.build_id = r.build_id
             WHERE r.remote = :remote AND (b.build_id IS NOT NULL OR a.build_id IS NOT NULL)",
        )?;
        let rows = stmt.query_map(named_params! {":remote": remote}, |r| {
            Ok((
                r.get::<_, String>(0)?,
                Marked {
                    mark: RemoteMark {
                        etag: r.get(1)?,
                        serial: r.get(2)?,
                        lineage: r.get(3)?,
                    },
                    serial: r.get(4)?,
                    lineage: r.get(5)?,
                    archived: r.get(6)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every build id with its serial, in id order.
    pub fn build_serials(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT build_id, serial FROM builds ORDER BY build_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The build as a snapshot, as `conn` sees it (inside a transaction of the caller's).
pub fn snapshot_in(conn: &rusqlite::Connection, build_id: &str) -> Result<Snapshot> {
    let build =
        load_build(conn, build_id)?.ok_or_else(|| Error::UnknownBuild(build_id.to_string()))?;
    let plan = load_plan(conn, &build.plan_hash)?;
    let mut metadata = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT key, value, updated_serial FROM build_meta WHERE build_id = :id")?;
    let rows = stmt.query_map(named_params! {":id": build_id}, |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?;
    for row in rows {
        let (k, value, serial) = row?;
        metadata.insert(k, MetaEntry { value, serial });
    }
    let events = load_events(conn, build_id)?;
    let mut snap = Snapshot::new(build, plan, metadata, events);
    snap.alerts = shared_alerts(conn, build_id)?;
    Ok(snap)
}

/// The build's alerts that travel with it (raised in remote mode).
fn shared_alerts(conn: &rusqlite::Connection, build_id: &str) -> Result<Vec<AlertEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT dedupe_key, kind, payload, state, attempts, next_try_at, claimed_by,
                claimed_until, last_error, created_at, delivered_at
         FROM alerts WHERE build_id = :id AND shared = 1 ORDER BY id",
    )?;
    let rows = stmt.query_map(named_params! {":id": build_id}, |r| {
        Ok((
            (
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ),
            (
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, String>(5)?,
            ),
            (
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ),
            (
                r.get::<_, Option<String>>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, Option<String>>(10)?,
            ),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            (dedupe_key, kind, payload),
            (state, attempts, next),
            (claimed_by, until),
            (last_error, created, delivered),
        ) = row?;
        let when = |t: Option<String>| t.as_deref().map(time::parse).transpose();
        out.push(AlertEntry {
            payload: serde_json::from_str(&payload)
                .map_err(|e| Error::Corrupt(format!("alert {dedupe_key}: payload: {e}")))?,
            dedupe_key,
            kind,
            state,
            attempts,
            next_try_at: time::parse(&next)?,
            claimed_by,
            claimed_until: when(until)?,
            last_error,
            created_at: time::parse(&created)?,
            delivered_at: when(delivered)?,
        });
    }
    Ok(out)
}

/// Take the snapshot's alerts and their delivery state (the remote's word wins: claims
/// and deliveries are made through it).
fn merge_alerts(tx: &rusqlite::Transaction<'_>, snap: &Snapshot) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO alerts (build_id, kind, dedupe_key, payload, state, attempts, next_try_at,
            claimed_by, claimed_until, last_error, created_at, delivered_at, shared)
         VALUES (:build, :kind, :key, :payload, :state, :attempts, :next, :by, :until, :error,
            :created, :delivered, 1)
         ON CONFLICT (dedupe_key) DO UPDATE SET state = excluded.state,
            attempts = excluded.attempts, next_try_at = excluded.next_try_at,
            claimed_by = excluded.claimed_by, claimed_until = excluded.claimed_until,
            last_error = excluded.last_error, delivered_at = excluded.delivered_at, shared = 1",
    )?;
    for a in &snap.alerts {
        stmt.execute(named_params! {
            ":build": snap.build_id, ":kind": a.kind, ":key": a.dedupe_key,
            ":payload": a.payload.to_string(), ":state": a.state, ":attempts": a.attempts,
            ":next": time::format(a.next_try_at), ":by": a.claimed_by,
            ":until": a.claimed_until.map(time::format), ":error": a.last_error,
            ":created": time::format(a.created_at), ":delivered": a.delivered_at.map(time::format),
        })?;
    }
    Ok(())
}

/// [`Store::remote_mark`] on a connection of the caller's.
pub fn remote_mark_in(
    conn: &rusqlite::Connection,
    remote: &str,
    build_id: &str,
) -> Result<Option<RemoteMark>> {
    Ok(conn
        .prepare_cached(
            "SELECT etag, serial, lineage FROM remote_sync
             WHERE remote = :remote AND build_id = :id",
        )?
        .query_row(named_params! {":remote": remote, ":id": build_id}, |r| {
            Ok(RemoteMark {
                etag: r.get(0)?,
                serial: r.get(1)?,
                lineage: r.get(2)?,
            })
        })
        .optional()?)
}

/// [`Store::set_remote_mark`] on a connection of the caller's.
pub fn set_remote_mark_in(
    conn: &rusqlite::Connection,
    remote: &str,
    build_id: &str,
    mark: &RemoteMark,
) -> Result<()> {
    conn.execute(
        "INSERT INTO remote_sync (remote, build_id, etag, serial, lineage, synced_at)
         VALUES (:remote, :id, :etag, :serial, :lineage, :at)
         ON CONFLICT (remote, build_id) DO UPDATE SET etag = excluded.etag,
            serial = excluded.serial, lineage = excluded.lineage, synced_at = excluded.synced_at",
        named_params! {
            ":remote": remote, ":id": build_id, ":etag": mark.etag, ":serial": mark.serial,
            ":lineage": mark.lineage, ":at": time::format(std::time::SystemTime::now()),
        },
    )?;
    Ok(())
}

/// Insert a build that is not here, whole: plan, summary, events, metadata.
fn write_whole(tx: &rusqlite::Transaction<'_>, snap: &Snapshot) -> Result<()> {
    let plan = snap.plan();
    tx.execute(
        "INSERT OR IGNORE INTO plans (hash, name, body) VALUES (:hash, :name, :body)",
        named_params! {":hash": plan.hash(), ":name": plan.name, ":body": plan.to_json()},
    )?;
    insert_build(tx, &snap.build)?;
    if update_summary(tx, &snap.build, snap.build.serial)? != 1 {
        return Err(Error::Corrupt(format!(
            "build '{}' could not be written whole",
            snap.build_id
        )));
    }
    insert_events(tx, &snap.build_id, &snap.events)?;
    write_meta(tx, snap)
}

/// Remove the task results the remote copy pruned (their `pruned` event comes with the
/// events appended next), through the append-only gate.
fn prune_as_there(tx: &rusqlite::Transaction<'_>, build_id: &str, seqs: &[u64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    super::archive::remove_events(tx, build_id, &|conn| {
        let mut stmt = conn.prepare_cached(
            "DELETE FROM events WHERE build_id = :id AND seq = :seq AND kind = 'task'",
        )?;
        for seq in seqs {
            stmt.execute(named_params! {":id": build_id, ":seq": seq})?;
        }
        Ok(())
    })
}

/// Append the snapshot's events after event `have`, and take its summary and metadata.
/// The local lease goes: the attempt it covered is no longer the latest.
fn append_from(
    tx: &rusqlite::Transaction<'_>,
    snap: &Snapshot,
    local: &Build,
    have: u64,
) -> Result<()> {
    let start = snap.events.partition_point(|e| e.seq <= have);
    insert_events(tx, &snap.build_id, &snap.events[start..])?;
    if update_summary(tx, &snap.build, local.serial)? != 1 {
        return Err(Error::Corrupt(format!(
            "build '{}' changed underneath the import",
            snap.build_id
        )));
    }
    write_meta(tx, snap)
}

fn insert_events(tx: &rusqlite::Transaction<'_>, build_id: &str, events: &[Event]) -> Result<()> {
    let mut stmt = tx.prepare_cached(super::INSERT_EVENT)?;
    for e in events {
        stmt.execute(named_params! {
            ":id": build_id, ":seq": e.seq, ":serial": e.serial, ":at": time::format(e.at),
            ":kind": e.kind.as_str(), ":state": e.state, ":attempt": e.attempt,
            ":message": e.message, ":category": e.category.map(|c| c.as_str()),
            ":exit_code": e.exit_code, ":duration": e.duration_ms,
            ":actor": serde_json::to_string(&e.actor).expect("an actor always serializes"),
            ":owner": e.owner, ":write_id": e.write_id, ":until": e.until.map(time::format),
            ":inputs": e.inputs.as_ref().map(|m| serde_json::to_string(m).expect("a manifest always serializes")),
            ":count": e.count,
            ":outputs": e.outputs.as_ref().map(|o| serde_json::to_string(o).expect("text by key always serializes")),
            ":after": e.after.as_ref().map(|a| serde_json::to_string(a).expect("text always serializes")),
            ":resource": e.resource.as_ref().map(|r| serde_json::to_string(r).expect("a resource op always serializes")),
        })?;
    }
    Ok(())
}

fn write_meta(tx: &rusqlite::Transaction<'_>, snap: &Snapshot) -> Result<()> {
    let mut stmt = tx.prepare_cached(super::UPSERT_META)?;
    for (k, m) in &snap.metadata {
        stmt.execute(named_params! {
            ":id": snap.build_id, ":key": k, ":value": m.value, ":serial": m.serial,
        })?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "snapshot_format_tests.rs"]
mod format_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Actor;
    use crate::model::{Ctx, InitRequest, Transition};
    use std::time::SystemTime;

    fn init(store: &mut Store, id: &str) {
        let req = InitRequest {
            meta: vec![("git".into(), "abc".into())],
            ..InitRequest::sample(id)
        };
        store
            .init(
                &req,
                &Actor::from_lookup("t", "test-host", 0, |_| None),
                SystemTime::now(),
            )
            .unwrap();
    }

    fn step(store: &mut Store, t: Transition) {
        store
            .transition(
                "b",
                &t,
                &Actor::from_lookup("t", "test-host", 0, |_| None),
                &Ctx::live(),
            )
            .unwrap();
    }

    #[test]
    fn import_creates_fast_forwards_and_refuses_divergence() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Store::open(&dir.path().join("a.db")).unwrap();
        let mut b = Store::open(&dir.path().join("b.db")).unwrap();
        init(&mut a, "b");
        step(&mut a, Transition::Start { state: 5 });
        let s1 = a.snapshot("b").unwrap();
        assert_eq!(
            b.import(&s1, false).unwrap(),
            Imported::Created { serial: 2 }
        );
        assert_eq!(b.snapshot("b").unwrap(), s1, "B holds exactly A's build");
        assert_eq!(
            b.import(&s1, false).unwrap(),
            Imported::UpToDate { serial: 2 }
        );

        step(&mut a, Transition::complete(5));
        step(
            &mut a,
            Transition::Meta {
                pairs: vec![("ami".into(), "ami-1".into())],
            },
        );
        let s2 = a.snapshot("b").unwrap();
        assert_eq!(
            b.import(&s2, false).unwrap(),
            Imported::FastForward { from: 2, to: 4 }
        );
        assert_eq!(b.snapshot("b").unwrap(), s2);
        assert_eq!(
            b.import(&s1, false).unwrap(),
            Imported::LocalAhead {
                local: 4,
                remote: 2
            }
        );

        // B moves on by itself: A's next snapshot diverges from it.
        step(&mut b, Transition::Start { state: 10 });
        step(
            &mut a,
            Transition::Skip {
                state: 10,
                reason: "x".into(),
            },
        );
        let s3 = a.snapshot("b").unwrap();
        let before = b.snapshot("b").unwrap();
        let err = b.import(&s3, false).unwrap_err();
        assert!(
            matches!(err, Error::Diverged(ref m) if m.contains("diverged") && m.contains("--take-remote")),
            "{err}"
        );
        assert_eq!(
            b.snapshot("b").unwrap(),
            before,
            "a refused import wrote something"
        );

        // A person takes the remote side: B now holds A's history exactly.
        assert_eq!(
            b.import(&s3, true).unwrap(),
            Imported::Replaced { from: 5, to: 5 }
        );
        assert_eq!(b.snapshot("b").unwrap(), s3);
        // And the append-only rule is back in force.
        assert!(b
            .conn
            .execute("DELETE FROM events WHERE build_id = 'b'", [])
            .is_err());

        // Another build with the same id (another lineage) is refused.
        let mut c = Store::open(&dir.path().join("c.db")).unwrap();
        init(&mut c, "b");
        let err = b.import(&c.snapshot("b").unwrap(), false).unwrap_err();
        assert!(
            err.to_string().contains("different build with the same id"),
            "{err}"
        );
    }
}
