//! The SQLite store. One write is one `BEGIN IMMEDIATE` transaction that reads the build,
//! runs the pure [`crate::model::apply`], updates the summary row and appends the events:
//! either all of it lands or none of it does.
//!
//! Connections use WAL (readers never block the writer), `synchronous=FULL` (a committed
//! transition survives a power cut) and a busy timeout, so concurrent writers queue up
//! instead of failing with "database is locked".

mod archive;
pub mod fleet;
mod journal;
pub mod outbox;
mod schema;
mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{named_params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::context::Actor;
use crate::model::{apply, Build, Ctx, Event, InitRequest, NewEvent, Transition};
use crate::plan::Plan;
use crate::time;
use crate::{Error, Result};

pub use archive::{Archived, Counter, Removed};
pub use journal::Journaled;
pub use schema::SCHEMA_VERSION;
pub use snapshot::{remote_mark_in, set_remote_mark_in, snapshot_in, Imported, Marked, RemoteMark};

/// How long a writer waits for another writer before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// The WAL size past which a write folds it back into the database (see `Store::trim_wal`).
pub const WAL_TRIM_BYTES: u64 = 256 * 1024;

/// The longest busy timeout accepted: an hour, in milliseconds.
pub const MAX_BUSY_TIMEOUT_MS: u64 = 3_600_000;

pub struct Store {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
}

/// The result of `init`: the build, and whether this call created it.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    pub build: Build,
    pub created: bool,
}

impl Store {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// Open an existing database; a missing or empty file is [`Error::NoDatabase`], and
    /// nothing is created or changed. Every command but init-state opens this way, so that a mistyped
    /// `--db` is an error instead of a fresh, empty database.
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<Store> {
        // An empty file (`: > x.db`, a failed copy) is no database either: SQLite would
        // take it for a new one and write a schema into it.
        if std::fs::metadata(path).map_or(true, |m| m.is_file() && m.len() == 0) {
            return Err(Error::NoDatabase(path.to_path_buf()));
        }
        Store::open_with(path, busy_timeout)
    }

    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<Store> {
        // SQLite would only say "unable to open database file".
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(Error::Database {
                path: path.to_path_buf(),
                message: format!(
                    "is a directory, not a database file: give the file's path (e.g. --db {})",
                    path.join("buildstate.db").display()
                ),
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // SQLite takes milliseconds as an i32: keep any caller's value within range.
        let busy_timeout = busy_timeout.min(Duration::from_millis(MAX_BUSY_TIMEOUT_MS));
        let conn = Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            busy_timeout,
        };
        // Several processes opening a brand-new file race to switch it to WAL and
        // migrate it; SQLite answers some of those lock conflicts with an immediate BUSY
        // (its deadlock case) instead of waiting, so the set-up is retried here.
        let start = std::time::Instant::now();
        loop {
            match schema::prepare(&mut store.conn, path) {
                Err(e) if e.is_busy() && start.elapsed() < busy_timeout => {
                    std::thread::sleep(Duration::from_millis(
                        5 + u64::from(std::process::id() % 20),
                    ));
                }
                other => return other.map(|()| store),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` in one write transaction (`BEGIN IMMEDIATE`), committed if it succeeds.
    pub(crate) fn in_write_tx<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    }

    /// SQLite's integrity check: an error naming the first problem found.
    pub fn integrity_check(&self) -> Result<()> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(Error::Database {
                path: self.path.clone(),
                message: format!("integrity check failed: {verdict}"),
            })
        }
    }

    /// A consistent copy of the whole database at `dest` (SQLite's online backup: never
    /// a copy of a live file), written while other processes keep writing.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        self.conn
            .backup(
                rusqlite::MAIN_DB,
                dest,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .map_err(Error::from)
    }

    /// Create a build, or confirm that an identical one exists (no write then).
    pub fn init(
        &mut self,
        req: &InitRequest,
        actor: &Actor,
        now: SystemTime,
    ) -> Result<InitOutcome> {
        req.validate()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(a) = archive::archived_in(&tx, &req.build_id)? {
            // A new build under an archived id would fork its history.
            return Err(a.error());
        }
        if let Some(existing) = load_build(&tx, &req.build_id)? {
            let conflict =
                |field: &str, existing: String, requested: String, hint| Error::Conflict {
                    build_id: req.build_id.clone(),
                    field: field.to_string(),
                    existing,
                    requested,
                    hint,
                };
            if existing.cloud != req.cloud {
                return Err(conflict(
                    "cloud",
                    quote(&existing.cloud),
                    quote(&req.cloud),
                    "",
                ));
            }
            if existing.image != req.image {
                return Err(conflict(
                    "image",
                    quote(&existing.image),
                    quote(&req.image),
                    "",
                ));
            }
            let hash = req.plan.hash();
            if existing.plan_hash != hash {
                let stored = load_plan(&tx, &existing.plan_hash)?;
                return Err(conflict(
                    "plan",
                    format!("'{}' ({})", stored.name, &existing.plan_hash[..12]),
                    format!("'{}' ({})", req.plan.name, &hash[..12]),
                    "",
                ));
            }
            let meta = load_meta(&tx, &req.build_id)?;
            for (k, v) in &req.meta {
                let stored = meta.get(k).cloned().unwrap_or_default();
                if stored != crate::redact::redact(v) {
                    return Err(conflict(
                        &format!("metadata {k}"),
                        quote(&stored),
                        quote(v),
                        "; change metadata with `update-state BUILD_ID meta KEY=VALUE`",
                    ));
                }
            }
            return Ok(InitOutcome {
                build: existing,
                created: false,
            });
        }
        let (build, event) = req.new_build(uuid::Uuid::new_v4().to_string(), now);
        let hash = req.plan.hash();
        tx.execute(
            "INSERT OR IGNORE INTO plans (hash, name, body) VALUES (:hash, :name, :body)",
            named_params! {":hash": hash, ":name": req.plan.name, ":body": req.plan.to_json()},
        )?;
        insert_build(&tx, &build)?;
        let write_id = new_write_id();
        let tag = WriteTag {
            owner: None,
            write_id: &write_id,
        };
        append_events(&tx, &build, std::slice::from_ref(&event), actor, &tag, now)?;
        if !req.meta.is_empty() {
            // Initial metadata is part of the init write: same serial, same transaction.
            let pairs: Vec<(String, String)> = req
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), crate::redact::redact(v).into_owned()))
                .collect();
            upsert_meta(&tx, &build, &pairs)?;
        }
        tx.commit()?;
        Ok(InitOutcome {
            build,
            created: true,
        })
    }

    /// Apply one transition in one transaction, at `ctx.now`; returns the build as written.
    pub fn transition(
        &mut self,
        build_id: &str,
        t: &Transition,
        actor: &Actor,
        ctx: &Ctx<'_>,
    ) -> Result<Build> {
        let now = ctx.now;
        self.transition_stamped(build_id, t, actor, ctx, || now, |_, _| Ok(()))
    }

    /// [`Store::transition`], stamped by `clock`, read once the write holds the database
    /// (after any wait for another writer) instead of `ctx.now`: the time the write is
    /// made. `before_commit` runs inside the write's transaction once the new row and
    /// events are in place: if it fails, nothing is written. Remote mode pushes the
    /// build's snapshot there, so the local write lands only if the remote accepted it.
    pub fn transition_stamped(
        &mut self,
        build_id: &str,
        t: &Transition,
        actor: &Actor,
        ctx: &Ctx<'_>,
        clock: impl FnOnce() -> SystemTime,
        before_commit: impl FnOnce(&Connection, &Build) -> Result<()>,
    ) -> Result<Build> {
        crate::model::validate_build_id(build_id)?;
        let waiting = std::time::Instant::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tracing::debug!(
            target: "buildstate::store",
            "build {build_id}: the database's write lock taken after {} ms",
            waiting.elapsed().as_millis()
        );
        let now = clock();
        let build = load_build(&tx, build_id)?.ok_or_else(|| archive::missing(&tx, build_id))?;
        // A build's time never runs backwards: a write is never earlier than the one
        // before it, whatever this machine's clock says (durations stay >= 0).
        let now = now.max(build.updated_at);
        let ctx = &Ctx { now, ..*ctx };
        if crate::model::is_repeated_start(&build, t, ctx) {
            return Ok(build);
        }
        if let Transition::Resource { op, .. } = t {
            check_resource_op(&tx, &build, op, ctx)?;
        }
        if let Transition::Output { pairs, .. } = t {
            let current = crate::outputs::current(&load_output_events(&tx, build_id)?);
            crate::outputs::check_total(&crate::outputs::values(&current), pairs)?;
        }
        // What a revocation withdraws, and who consumed it: read in this transaction.
        let mut consumers = Vec::new();
        if let Transition::Revoke { .. } = t {
            let current = crate::outputs::current(&load_output_events(&tx, build_id)?);
            if current.is_empty() {
                return Err(Error::Refused(crate::error::Refusal::new(format!(
                    "build '{build_id}' has no current outputs to revoke (none recorded, or they were superseded or revoked already); nothing was written"
                ))));
            }
            consumers = fleet::consumers(&tx, build_id, &crate::outputs::values(&current))?;
        }
        // Retention counts what it removes inside this transaction; nothing to remove
        // is nothing to write.
        let counted;
        let t = match t {
            Transition::PruneTasks { before, .. } => {
                let count = archive::old_tasks(&tx, build_id, *before)?;
                if count == 0 {
                    return Ok(build);
                }
                counted = Transition::PruneTasks {
                    before: *before,
                    count,
                };
                &counted
            }
            t => t,
        };
        let plan = load_plan(&tx, &build.plan_hash)?;
        let change = apply(&build, &plan, t, ctx)?;
        let b = &change.build;
        let updated = update_summary(&tx, b, build.serial)?;
        if updated != 1 {
            // Cannot happen under BEGIN IMMEDIATE; refuse rather than write a fork.
            return Err(Error::Corrupt(format!(
                "build '{build_id}' changed underneath this write (serial {})",
                build.serial
            )));
        }
        let write_id = ctx.write_id.map_or_else(new_write_id, str::to_string);
        let tag = WriteTag {
            owner: ctx.owner,
            write_id: &write_id,
        };
        append_events(&tx, &change.build, &change.events, actor, &tag, now)?;
        if let Transition::PruneTasks { before, count } = t {
            archive::prune_tasks(&tx, build_id, *before, *count)?;
        }
        upsert_meta(&tx, &change.build, &change.meta)?;
        // Alerts go into the outbox in the same transaction: one is never lost, and a
        // refused write raises none.
        outbox::enqueue(
            &tx,
            &crate::alerts::for_change(&build, &change, t, &plan, actor),
            now,
        )?;
        if let Transition::Revoke { reason } = t {
            let alerts: Vec<_> = consumers
                .iter()
                .filter_map(|c| crate::alerts::revoked(c, &change.build, reason, actor))
                .collect();
            outbox::enqueue(&tx, &alerts, now)?;
        }
        before_commit(&tx, &change.build)?;
        fail_point_commit()?;
        tx.commit()?;
        self.trim_wal();
        Ok(change.build)
    }

    /// Fold the WAL back into the database once it passes [`WAL_TRIM_BYTES`].
    ///
    /// Every command is a new process and so the first connection, and a first connection
    /// rebuilds the WAL index by reading the whole WAL, forgetting that earlier processes
    /// already checkpointed it: left alone the WAL never restarts and every open reads more.
    /// A TRUNCATE checkpoint empties it. Best effort: the transition is already committed
    /// and durable, so a busy database just means a later write trims instead.
    fn trim_wal(&self) {
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_TRIM_BYTES);
        if big && self.conn.busy_timeout(Duration::from_millis(200)).is_ok() {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            let _ = self.conn.busy_timeout(self.busy_timeout);
        }
    }

    /// Extend the lease `owner` holds on `attempt` (a heartbeat). Not a transition: the
    /// serial and the history are untouched, so heartbeats do not churn remote copies.
    /// Returns false when `owner` no longer holds it (the lease expired and was taken
    /// over, the state moved on, or the build was cancelled): the caller should stop.
    ///
    /// It waits at most `wait` for another writer, never as long as the lease: a missed
    /// heartbeat is retried at the next beat, while a heartbeat stuck behind a long
    /// writer would let the lease run out.
    pub fn renew_lease(
        &mut self,
        build_id: &str,
        owner: &str,
        attempt: u32,
        until: SystemTime,
        wait: Duration,
    ) -> Result<bool> {
        self.renew_lease_with(build_id, owner, attempt, until, wait, |_, _| Ok(()))
    }

    /// [`Store::renew_lease`], with `before_commit` run inside its transaction once the
    /// lease is extended (remote mode pushes it there): if it fails, nothing changes.
    pub fn renew_lease_with(
        &mut self,
        build_id: &str,
        owner: &str,
        attempt: u32,
        until: SystemTime,
        wait: Duration,
        before_commit: impl FnOnce(&Connection, &Build) -> Result<()>,
    ) -> Result<bool> {
        self.conn
            .busy_timeout(wait.min(Duration::from_millis(MAX_BUSY_TIMEOUT_MS)))?;
        let renewed = (|| -> Result<bool> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE builds SET lease_expires_at = :until
                 WHERE build_id = :id AND lease_owner = :owner AND attempt = :attempt
                   AND status = 'running'",
                named_params! {
                    ":until": time::format(until), ":id": build_id, ":owner": owner,
                    ":attempt": attempt,
                },
            )?;
            if n != 1 {
                return Ok(false);
            }
            let b = load_build(&tx, build_id)?
                .ok_or_else(|| Error::UnknownBuild(build_id.to_string()))?;
            before_commit(&tx, &b)?;
            tx.commit()?;
            Ok(true)
        })();
        self.conn.busy_timeout(self.busy_timeout)?;
        renewed
    }

    pub fn build(&self, build_id: &str) -> Result<Option<Build>> {
        load_build(&self.conn, build_id)
    }

    /// The plan a build was created with.
    pub fn plan(&self, plan_hash: &str) -> Result<Plan> {
        load_plan(&self.conn, plan_hash)
    }

    /// A build that must exist, with its plan ([`Error::UnknownBuild`] otherwise).
    pub fn build_and_plan(&self, build_id: &str) -> Result<(Build, Plan)> {
        let b = self
            .build(build_id)?
            .ok_or_else(|| Error::UnknownBuild(build_id.to_string()))?;
        let plan = self.plan(&b.plan_hash)?;
        Ok((b, plan))
    }

    pub fn events(&self, build_id: &str) -> Result<Vec<Event>> {
        load_events(&self.conn, build_id)
    }

    /// The current outputs of a build by key (`crate::outputs::current`); none for a
    /// build that does not exist.
    pub fn outputs(
        &self,
        build_id: &str,
    ) -> Result<std::collections::BTreeMap<String, crate::outputs::Output>> {
        Ok(crate::outputs::current(&load_output_events(
            &self.conn, build_id,
        )?))
    }

    /// The revocation of `build_id`'s outputs that stands (`crate::outputs::revoked`): its
    /// reason, or `None`.
    pub fn revoked(&self, build_id: &str) -> Result<Option<String>> {
        let events = load_output_events(&self.conn, build_id)?;
        Ok(crate::outputs::revoked(&events).map(|e| {
            e.message
                .clone()
                .unwrap_or_else(|| "no reason given".into())
        }))
    }

    /// The builds whose completed states consumed `parent`'s outputs `values` (by key) as
    /// they are now (`inputs.builds`), as this database knows them.
    pub fn consumers(
        &self,
        parent: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<Vec<crate::alerts::Consumer>> {
        fleet::consumers(&self.conn, parent, values)
    }

    /// The resource ledger of a build (`crate::resources`), in the order created, with
    /// the orphans judged at `now` for a failed, blocked or idle build's `window`; none
    /// for a build that does not exist.
    pub fn resources(
        &self,
        build_id: &str,
        now: SystemTime,
        window: Duration,
    ) -> Result<Vec<crate::resources::Resource>> {
        let Some(b) = load_build(&self.conn, build_id)? else {
            return Ok(Vec::new());
        };
        let events = load_resource_events(&self.conn, build_id)?;
        let mut ledger = crate::resources::ledger(&events);
        crate::resources::judge(&b, &events, &mut ledger, now, window);
        Ok(ledger)
    }

    /// The resource ledgers of every build that has one, by build id, judged as
    /// [`Store::resources`] judges one: two queries for the fleet (a collector's dry run
    /// over 10,000 builds stays well under a second).
    pub fn all_resources(
        &self,
        now: SystemTime,
        window: Duration,
    ) -> Result<Vec<(String, Vec<crate::resources::Resource>)>> {
        // Each event with its build id: only the columns the ledger and its judgement
        // read (the actor's JSON, a third of the cost, is left unread).
        let (mut ids, mut events): (Vec<String>, Vec<Event>) = (Vec::new(), Vec::new());
        {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT seq, serial, at, kind, state, attempt, owner, resource, build_id
                 FROM events INDEXED BY events_resources
                 WHERE {RESOURCE_KINDS}
                 ORDER BY build_id, seq"
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                ids.push(r.get(8)?);
                events.push(read_ledger_event(r)?);
            }
        }
        let mut builds: BTreeMap<String, Build> = BTreeMap::new();
        {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {BUILD_COLUMNS} FROM builds WHERE build_id IN
                   (SELECT DISTINCT build_id FROM events INDEXED BY events_resources
                    WHERE {RESOURCE_KINDS} AND kind = 'resource')"
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let b = build_from_row(r)?;
                builds.insert(b.build_id.clone(), b);
            }
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < ids.len() {
            let id = &ids[start];
            let end = ids[start..]
                .iter()
                .position(|b| b != id)
                .map_or(ids.len(), |n| start + n);
            let mine = &events[start..end];
            start = end;
            let mut ledger = crate::resources::ledger(mine);
            // No resource, or an archived build's events without its row.
            let (false, Some(b)) = (ledger.is_empty(), builds.get(id)) else {
                continue;
            };
            crate::resources::judge(b, mine, &mut ledger, now, window);
            out.push((id.clone(), ledger));
        }
        Ok(out)
    }

    /// The other builds' states `build_id` waits for before any of its states runs: its
    /// init event's `after` (`init-state --after`), each BUILD:STATE; none for a build
    /// that does not exist.
    pub fn build_after(&self, build_id: &str) -> Result<Vec<String>> {
        let text: Option<Option<String>> = self
            .conn
            .prepare_cached(
                "SELECT after FROM events WHERE build_id = :id AND kind = 'init' ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(named_params! {":id": build_id}, |r| r.get(0))
            .optional()?;
        match text.flatten() {
            None => Ok(Vec::new()),
            Some(t) => serde_json::from_str(&t).map_err(|e| {
                Error::Corrupt(format!("build '{build_id}': its init event's after: {e}"))
            }),
        }
    }

    /// The events of the writes from `serial` on (one write's: its serial).
    pub fn events_since(&self, build_id: &str, serial: u64) -> Result<Vec<Event>> {
        load_events_since(&self.conn, build_id, serial)
    }

    pub fn metadata(&self, build_id: &str) -> Result<BTreeMap<String, String>> {
        load_meta(&self.conn, build_id)
    }

    /// The build's epoch: 1, plus one for every `update-state reset`.
    pub fn epoch(&self, build_id: &str) -> Result<u32> {
        let resets: u32 = self
            .conn
            .prepare_cached("SELECT count(*) FROM events WHERE build_id = :id AND kind = 'reset'")?
            .query_row(named_params! {":id": build_id}, |r| r.get(0))?;
        Ok(resets + 1)
    }

    /// This machine's cached digests of the files under `root`, as the bytes
    /// [`crate::inputs::FileCache`] wrote (the store keeps them, inputs reads them).
    pub fn file_cache_bytes(&self, root: &Path) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT entries FROM input_cache WHERE root = :root")?
            .query_row(named_params! {":root": root.to_string_lossy()}, |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Keep a root's cached digests. Best effort: a cache that cannot be written (a busy
    /// or read-only database) only costs hashing next time, and concurrent writers of one
    /// root's cache each keep a valid one (the last wins).
    pub fn save_file_cache_bytes(&self, root: &Path, entries: &[u8]) {
        let _ = self.conn.execute(
            "INSERT OR REPLACE INTO input_cache (root, entries, updated_at)
             VALUES (:root, :entries, :now)",
            named_params! {
                ":root": root.to_string_lossy(), ":entries": entries,
                ":now": time::format(SystemTime::now()),
            },
        );
    }

    /// The completed builds whose last verify (passed, drift or could not run) is older
    /// than `before`, or that were never verified: those `monitor verify` checks, the
    /// longest unverified first.
    pub fn due_for_verify(&self, before: SystemTime) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT b.build_id FROM builds b
             LEFT JOIN (SELECT build_id, MAX(at) AS at FROM events
                        WHERE kind IN ('verified', 'drift', 'unverified') GROUP BY build_id) v
               ON v.build_id = b.build_id
             WHERE b.status = 'completed' AND (v.at IS NULL OR v.at < :before)
             ORDER BY v.at IS NOT NULL, v.at, b.build_id",
        )?;
        let ids = stmt
            .query_map(
                named_params! {":before": crate::time::format(before)},
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// The events a staleness check reads: inits, completions (with their inputs as
    /// stored), skips, drifts and passed verifies, oldest first.
    pub fn marks(&self, build_id: &str) -> Result<Vec<crate::manifest::Mark>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, state, message, inputs FROM events
             WHERE build_id = :id AND kind IN ('init', 'complete', 'skip', 'reused', 'drift', 'verified')
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(named_params! {":id": build_id}, |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<u8>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, state, message, inputs) = row?;
            out.push(crate::manifest::Mark {
                seq,
                kind: kind.parse()?,
                state,
                message,
                inputs,
            });
        }
        Ok(out)
    }
}

/// Tests only (the `fail-points` feature): `BUILDSTATE_TEST_FAIL_COMMIT=1` makes a write's
/// commit fail as a full disk would, after everything before it (remote mode's push
/// included) ran.
fn fail_point_commit() -> Result<()> {
    #[cfg(feature = "fail-points")]
    if std::env::var_os("BUILDSTATE_TEST_FAIL_COMMIT").is_some_and(|v| v == "1") {
        return Err(Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full (injected by BUILDSTATE_TEST_FAIL_COMMIT)".into()),
        )));
    }
    Ok(())
}

/// A value for a conflict message, redacted: the requested side is raw user input.
fn quote(s: &str) -> String {
    format!("'{}'", crate::redact::redact(s))
}

/// The build's summary row, as `conn` sees it (inside a transaction of the caller's).
pub(crate) fn build_in(conn: &Connection, build_id: &str) -> Result<Option<Build>> {
    load_build(conn, build_id)
}

/// The columns a [`Build`] is read from, in [`build_from_row`]'s order.
const BUILD_COLUMNS: &str = "build_id, lineage, serial, cloud, image, plan_hash, current_state,
    active_state, attempt, last_error, extra_attempts, blocked_reason, lease_owner,
    status, attempt_started_at, last_category, created_at, updated_at,
    first_attempt_at, next_attempt_at, lease_expires_at";

/// A build row read as `SELECT {BUILD_COLUMNS}`: typed columns read by rusqlite, then
/// timestamps and enums parsed, so that a corrupt value names the build instead of
/// panicking.
pub(crate) fn build_from_row(r: &Row<'_>) -> Result<Build> {
    let mut b = Build {
        build_id: r.get(0)?,
        lineage: r.get(1)?,
        serial: r.get(2)?,
        cloud: r.get(3)?,
        image: r.get(4)?,
        plan_hash: r.get(5)?,
        current_state: r.get(6)?,
        active_state: r.get(7)?,
        attempt: r.get(8)?,
        last_error: r.get(9)?,
        extra_attempts: r.get(10)?,
        blocked_reason: r.get(11)?,
        lease_owner: r.get(12)?,
        status: crate::model::Status::Pending,
        attempt_started_at: None,
        last_category: None,
        first_attempt_at: None,
        next_attempt_at: None,
        lease_expires_at: None,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    };
    let text = |i: usize| r.get::<_, Option<String>>(i);
    let when = |i: usize| -> Result<Option<SystemTime>> {
        text(i)?.as_deref().map(time::parse).transpose()
    };
    let id = b.build_id.clone();
    let missing = |what: &str| Error::Corrupt(format!("build '{id}': {what} is empty"));
    b.status = text(13)?.ok_or_else(|| missing("status"))?.parse()?;
    b.attempt_started_at = when(14)?;
    b.last_category = text(15)?.as_deref().map(str::parse).transpose()?;
    b.created_at = time::parse(&text(16)?.ok_or_else(|| missing("created_at"))?)?;
    b.updated_at = time::parse(&text(17)?.ok_or_else(|| missing("updated_at"))?)?;
    b.first_attempt_at = when(18)?;
    b.next_attempt_at = when(19)?;
    b.lease_expires_at = when(20)?;
    Ok(b)
}

fn load_build(conn: &Connection, build_id: &str) -> Result<Option<Build>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds WHERE build_id = :id"
    ))?;
    let mut rows = stmt.query(named_params! {":id": build_id})?;
    rows.next()?.map(build_from_row).transpose()
}

fn load_plan(conn: &Connection, hash: &str) -> Result<Plan> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM plans WHERE hash = :hash")?
        .query_row(named_params! {":hash": hash}, |r| r.get(0))
        .optional()?;
    let body = body.ok_or_else(|| Error::Corrupt(format!("plan {hash} is missing")))?;
    Plan::from_json(&body)
}

fn load_events(conn: &Connection, build_id: &str) -> Result<Vec<Event>> {
    load_events_since(conn, build_id, 0)
}

fn load_events_since(conn: &Connection, build_id: &str, serial: u64) -> Result<Vec<Event>> {
    select_events(
        conn,
        "WHERE build_id = :id AND serial >= :serial ORDER BY seq",
        named_params! {":id": build_id, ":serial": serial},
    )
}

/// The events `from_where` (what follows `FROM events`) selects.
fn select_events(
    conn: &Connection,
    from_where: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Event>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events {from_where}"))?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(read_event(r)?);
    }
    Ok(out)
}

/// The filter of schema 11's partial index `events_outputs`: the kinds
/// `crate::outputs::RELEVANT` names. A query through the index repeats it exactly.
const OUTPUT_KINDS: &str =
    "kind IN ('output', 'start', 'force', 'reset', 'rerun', 'rollback', 'revoke', 'reused')";
/// The filter of schema 12's `events_resources`: `crate::resources::RELEVANT`.
const RESOURCE_KINDS: &str =
    "kind IN ('resource', 'takeover', 'force', 'rerun', 'reset', 'rollback')";

/// The events that decide a build's current outputs (`crate::outputs::RELEVANT`),
/// oldest first, through the partial index schema 11 made for them (`INDEXED BY`: the
/// planner would take the primary key, and read every task result of the build).
fn load_output_events(conn: &Connection, build_id: &str) -> Result<Vec<Event>> {
    select_events(
        conn,
        &format!("INDEXED BY events_outputs WHERE build_id = :id AND {OUTPUT_KINDS} ORDER BY seq"),
        named_params! {":id": build_id},
    )
}

/// The events a build's resource ledger and its orphans are judged from
/// (`crate::resources`), oldest first, through schema 12's partial index.
fn load_resource_events(conn: &Connection, build_id: &str) -> Result<Vec<Event>> {
    select_events(
        conn,
        &format!(
            "INDEXED BY events_resources WHERE build_id = :id AND {RESOURCE_KINDS} ORDER BY seq"
        ),
        named_params! {":id": build_id},
    )
}

/// What the ledger must say for `op` to be written, read inside the write's transaction:
/// a deletion, check, claim or failed cleanup names a resource the ledger has (not
/// already deleted), and a claim is refused while another collector's lives, so that
/// two collectors never run one cleanup twice.
fn check_resource_op(
    conn: &Connection,
    b: &Build,
    op: &crate::resources::Op,
    ctx: &Ctx<'_>,
) -> Result<()> {
    use crate::resources::Op;
    if matches!(op, Op::Add { .. }) {
        return Ok(());
    }
    let (rtype, rid) = op.key();
    let events = load_resource_events(conn, &b.build_id)?;
    let ledger = crate::resources::ledger(&events);
    let Some(r) = ledger
        .iter()
        .rev()
        .find(|r| r.rtype == rtype && r.id == rid)
    else {
        return Err(Error::Refused(
            format!(
                "build '{}' has no resource {rtype} {rid} in its ledger (see `check-state {} --resources`); nothing was written",
                b.build_id, b.build_id
            )
            .into(),
        ));
    };
    if r.status == crate::resources::Health::Deleted && !matches!(op, Op::Check { .. }) {
        return Err(Error::Refused(
            format!(
                "build '{}': {rtype} {rid} is already deleted; nothing was written",
                b.build_id
            )
            .into(),
        ));
    }
    if let Op::Claim { .. } = op {
        if let (Some(until), by) = (r.claimed_until, &r.claimed_by) {
            if until > ctx.now && by.as_deref() != ctx.owner {
                return Err(Error::Refused(
                    format!(
                        "build '{}': the cleanup of {rtype} {rid} is claimed by {} until {}; nothing was written",
                        b.build_id,
                        by.as_deref().unwrap_or("?"),
                        time::format(until)
                    )
                    .into(),
                ));
            }
        }
    }
    Ok(())
}

/// The columns [`read_event`] reads, in its order.
const EVENT_COLUMNS: &str = "seq, serial, at, kind, state, attempt, message, category,
    exit_code, duration_ms, actor, owner, write_id, until, inputs, count, outputs, resource,
    after";

fn read_event(r: &rusqlite::Row<'_>) -> Result<Event> {
    let seq: u64 = r.get(0)?;
    Ok(Event {
        seq,
        serial: r.get(1)?,
        at: time::parse(&r.get::<_, String>(2)?)?,
        kind: r.get::<_, String>(3)?.parse()?,
        state: r.get(4)?,
        attempt: r.get(5)?,
        message: r.get(6)?,
        category: r
            .get::<_, Option<String>>(7)?
            .map(|c| c.parse())
            .transpose()?,
        exit_code: r.get(8)?,
        duration_ms: r.get(9)?,
        actor: json_column(r, 10, seq, "actor")?
            .ok_or_else(|| Error::Corrupt(format!("event {seq} has no actor")))?,
        owner: r.get(11)?,
        write_id: r.get(12)?,
        until: r
            .get::<_, Option<String>>(13)?
            .as_deref()
            .map(time::parse)
            .transpose()?,
        inputs: json_column(r, 14, seq, "inputs")?,
        count: r.get(15)?,
        outputs: json_column(r, 16, seq, "outputs")?,
        resource: json_column(r, 17, seq, "resource")?,
        after: json_column(r, 18, seq, "after")?,
    })
}

/// Column `i` of event `seq`'s row, JSON or NULL, as a `T`.
fn json_column<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    i: usize,
    seq: u64,
    what: &str,
) -> Result<Option<T>> {
    r.get::<_, Option<String>>(i)
        .map_err(|e| Error::Corrupt(format!("event {seq} {what}: {e}")))?
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| Error::Corrupt(format!("event {seq} {what}: {e}")))
}

/// An event as [`crate::resources::ledger`] and [`crate::resources::judge`] read it
/// (the columns `seq, serial, at, kind, state, attempt, owner, resource`); the rest left
/// empty, the actor's JSON unread.
fn read_ledger_event(r: &rusqlite::Row<'_>) -> Result<Event> {
    let seq: u64 = r.get(0)?;
    Ok(Event {
        seq,
        serial: r.get(1)?,
        at: time::parse(&r.get::<_, String>(2)?)?,
        kind: r.get::<_, String>(3)?.parse()?,
        state: r.get(4)?,
        attempt: r.get(5)?,
        message: None,
        category: None,
        exit_code: None,
        duration_ms: None,
        actor: crate::context::Actor {
            host: String::new(),
            user: String::new(),
            pid: 0,
            tool: String::new(),
            context: BTreeMap::new(),
        },
        owner: r.get(6)?,
        write_id: None,
        until: None,
        inputs: None,
        count: None,
        outputs: None,
        resource: json_column(r, 7, seq, "resource")?,
        after: None,
    })
}

fn load_meta(conn: &Connection, build_id: &str) -> Result<BTreeMap<String, String>> {
    let mut stmt =
        conn.prepare_cached("SELECT key, value FROM build_meta WHERE build_id = :id ORDER BY key")?;
    let rows = stmt.query_map(named_params! {":id": build_id}, |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Write the summary row of `b` over the row at `old_serial`; the number of rows changed
/// (0 when the row moved on meanwhile).
fn update_summary(conn: &Connection, b: &Build, old_serial: u64) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE builds SET serial = :serial, current_state = :current, active_state = :active,
            status = :status, attempt = :attempt, attempt_started_at = :started,
            last_error = :error, last_category = :category, updated_at = :updated,
            first_attempt_at = :first, next_attempt_at = :next, extra_attempts = :extra,
            blocked_reason = :blocked, lease_owner = :lease_owner,
            lease_expires_at = :lease_expires
         WHERE build_id = :id AND serial = :old_serial",
        named_params! {
            ":serial": b.serial,
            ":current": b.current_state,
            ":active": b.active_state,
            ":status": b.status.as_str(),
            ":attempt": b.attempt,
            ":started": b.attempt_started_at.map(time::format),
            ":error": b.last_error,
            ":category": b.last_category.map(|c| c.as_str()),
            ":updated": time::format(b.updated_at),
            ":first": b.first_attempt_at.map(time::format),
            ":next": b.next_attempt_at.map(time::format),
            ":extra": b.extra_attempts,
            ":blocked": b.blocked_reason,
            ":lease_owner": b.lease_owner,
            ":lease_expires": b.lease_expires_at.map(time::format),
            ":id": b.build_id,
            ":old_serial": old_serial,
        },
    )?)
}

fn insert_build(conn: &Connection, b: &Build) -> Result<()> {
    conn.execute(
        "INSERT INTO builds (build_id, lineage, serial, cloud, image, plan_hash, current_state,
            active_state, status, attempt, attempt_started_at, last_error, last_category,
            created_at, updated_at)
         VALUES (:id, :lineage, :serial, :cloud, :image, :plan, :current, :active, :status,
            :attempt, :started, :error, :category, :created, :updated)",
        named_params! {
            ":id": b.build_id, ":lineage": b.lineage, ":serial": b.serial, ":cloud": b.cloud,
            ":image": b.image, ":plan": b.plan_hash, ":current": b.current_state,
            ":active": b.active_state, ":status": b.status.as_str(), ":attempt": b.attempt,
            ":started": b.attempt_started_at.map(time::format), ":error": b.last_error,
            ":category": b.last_category.map(|c| c.as_str()),
            ":created": time::format(b.created_at), ":updated": time::format(b.updated_at),
        },
    )?;
    Ok(())
}

/// One event row; shared by every write and by snapshot imports.
const INSERT_EVENT: &str = "INSERT INTO events (build_id, seq, serial, at, kind, state,
    attempt, message, category, exit_code, duration_ms, actor, owner, write_id, until, inputs,
    count, outputs, resource, after)
    VALUES (:id, :seq, :serial, :at, :kind, :state, :attempt, :message, :category,
    :exit_code, :duration, :actor, :owner, :write_id, :until, :inputs, :count, :outputs,
    :resource, :after)";

/// One metadata value with the serial that set it.
const UPSERT_META: &str = "INSERT INTO build_meta (build_id, key, value, updated_serial)
    VALUES (:id, :key, :value, :serial)
    ON CONFLICT (build_id, key) DO UPDATE SET value = excluded.value,
        updated_serial = excluded.updated_serial";

/// Who wrote: the lease holder, if any, and the write's id (see [`Event::write_id`]).
pub(crate) struct WriteTag<'a> {
    pub owner: Option<&'a str>,
    pub write_id: &'a str,
}

/// A fresh write id.
pub fn new_write_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn append_events(
    conn: &Connection,
    b: &Build,
    events: &[NewEvent],
    actor: &Actor,
    tag: &WriteTag<'_>,
    now: SystemTime,
) -> Result<()> {
    let last: u64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE build_id = :id")?
        .query_row(named_params! {":id": b.build_id}, |r| r.get(0))?;
    let actor = serde_json::to_string(actor).expect("an actor always serializes");
    let mut stmt = conn.prepare_cached(INSERT_EVENT)?;
    for (i, e) in events.iter().enumerate() {
        stmt.execute(named_params! {
            ":id": b.build_id, ":seq": last + 1 + i as u64, ":serial": b.serial,
            ":at": time::format(e.at.unwrap_or(now)),
            ":kind": e.kind.as_str(), ":state": e.state, ":attempt": e.attempt,
            ":message": e.message, ":category": e.category.map(|c| c.as_str()),
            ":exit_code": e.exit_code, ":duration": e.duration_ms, ":actor": actor,
            ":owner": tag.owner, ":write_id": tag.write_id, ":until": e.until.map(time::format),
            ":inputs": e.inputs.as_ref().map(|m| serde_json::to_string(m).expect("a manifest always serializes")),
            ":count": e.count,
            ":outputs": e.outputs.as_ref().map(|o| serde_json::to_string(o).expect("text by key always serializes")),
            ":resource": e.resource.as_ref().map(|r| serde_json::to_string(r).expect("a resource op always serializes")),
            ":after": e.after.as_ref().map(|a| serde_json::to_string(a).expect("text always serializes")),
        })?;
    }
    Ok(())
}

fn upsert_meta(conn: &Connection, b: &Build, pairs: &[(String, String)]) -> Result<()> {
    let mut stmt = conn.prepare_cached(UPSERT_META)?;
    for (k, v) in pairs {
        stmt.execute(
            named_params! {":id": b.build_id, ":key": k, ":value": v, ":serial": b.serial},
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    /// Schema 10 types a `pruned` event's count; the events written before have it
    /// filled from their message, and stay append-only.
    #[test]
    fn a_version_9_database_gets_the_counts_of_its_pruned_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v9.db");
        let plan = Plan::default_plan();
        {
            let conn = Connection::open(&path).unwrap();
            for m in &schema::MIGRATIONS[..9] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch("PRAGMA application_id = 1112765489; PRAGMA user_version = 9;")
                .unwrap();
            conn.execute(
                "INSERT INTO plans (hash, name, body) VALUES (?1, ?2, ?3)",
                (plan.hash(), &plan.name, plan.to_json()),
            )
            .unwrap();
            conn.execute(
                "INSERT INTO builds (build_id, lineage, serial, cloud, image, plan_hash,
                    status, created_at, updated_at)
                 VALUES ('old', 'l-1', 2, 'aws', 'rhel9', ?1, 'pending',
                    '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')",
                [plan.hash()],
            )
            .unwrap();
            conn.execute_batch(
                r#"INSERT INTO events (build_id, seq, serial, at, kind, message, actor) VALUES
                 ('old', 1, 1, '2026-01-01T00:00:00.000Z', 'init', NULL, '{}'),
                 ('old', 4, 2, '2026-01-02T00:00:00.000Z', 'pruned',
                  '212 task result(s) recorded before 2026-01-01T12:00:00.000Z removed (retention)', '{}'),
                 ('old', 5, 2, '2026-01-02T00:00:00.000Z', 'meta', '212 task result(s) recorded before', '{}');"#,
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let counts: Vec<(String, Option<u64>)> = store
            .conn
            .prepare("SELECT kind, count FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            counts,
            [
                ("init".into(), None),
                ("pruned".into(), Some(212)),
                ("meta".into(), None)
            ]
        );
        let err = store
            .conn
            .execute("UPDATE events SET count = 1 WHERE seq = 4", [])
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }

    /// The partial indexes schemas 11 and 12 made, and the queries that read through
    /// them, name the kinds the folds read: one more kind there and an index would miss
    /// it.
    #[test]
    fn the_partial_indexes_cover_the_kinds_outputs_and_resources_are_read_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        for (relevant, sql, index) in [
            (
                crate::outputs::RELEVANT,
                include_str!("v14.sql"),
                "events_outputs",
            ),
            (
                crate::resources::RELEVANT,
                include_str!("v12.sql"),
                "events_resources",
            ),
        ] {
            let kinds = relevant
                .iter()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", ");
            let filter = format!("kind IN ({kinds})");
            assert!(sql.contains(&filter), "{filter}");
            assert!(include_str!("mod.rs").contains(&filter), "{filter}");
            let plan: String = store
                .conn
                .query_row(
                    &format!(
                        "EXPLAIN QUERY PLAN SELECT seq FROM events INDEXED BY {index} WHERE build_id = 'b' AND {filter} ORDER BY seq"
                    ),
                    [],
                    |r| r.get(3),
                )
                .unwrap();
            assert!(plan.contains(index), "{plan}");
        }
    }

    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let plan = Plan::default_plan();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("v1.sql")).unwrap();
            conn.execute_batch("PRAGMA application_id = 1112765489; PRAGMA user_version = 1;")
                .unwrap();
            conn.execute(
                "INSERT INTO plans (hash, name, body) VALUES (?1, ?2, ?3)",
                (plan.hash(), &plan.name, plan.to_json()),
            )
            .unwrap();
            conn.execute(
                "INSERT INTO builds (build_id, lineage, serial, cloud, image, plan_hash,
                    current_state, active_state, status, attempt, last_error, created_at, updated_at)
                 VALUES ('old', 'l-1', 4, 'aws', 'rhel9', ?1, 0, 5, 'failed', 1, 'it''s broken',
                    '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')",
                [plan.hash()],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let b = store.build("old").unwrap().unwrap();
        assert_eq!(b.status, Status::Blocked);
        assert_eq!(
            b.blocked_reason.as_deref(),
            Some("failed before retry policies were recorded")
        );
        assert_eq!(
            (b.serial, b.last_error.as_deref(), b.extra_attempts),
            (4, Some("it's broken"), 0)
        );
        let v: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let d = crate::decide::decide(Some(&b), &plan, SystemTime::now());
        assert_eq!(d.decision, crate::decide::Action::Blocked);
    }
}
