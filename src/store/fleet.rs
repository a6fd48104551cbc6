//! The fleet-wide reads `monitor` and `stats` make: the builds that may need a person,
//! a status row per build, the drifted states, builds by status, and the events the
//! statistics count, streamed. Each reads the `builds` table by its status index or the
//! events in one ordered pass, so they stay fast with 100,000 builds or a million
//! events in one database (docs/performance.md).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use rusqlite::{named_params, Connection};
use serde::Serialize;

use super::Store;
use crate::model::{Build, EventKind, Status};
use crate::plan::Plan;
use crate::{time, Error, Result};

/// One build's status row, for people (`monitor status`) and scripts (`--json`), its
/// ages computed by SQLite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusRow {
    pub build_id: String,
    pub status: Status,
    pub current_state: Option<u8>,
    pub active_state: Option<u8>,
    pub attempt: u32,
    /// Since the build's last write.
    pub age_seconds: u64,
    /// The lease holder of a running state.
    pub holder: Option<String>,
    /// Since the build's last passing verify (`check-state --verify`); left out when it
    /// never passed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_seconds_ago: Option<u64>,
    /// Its resources nobody will use any more and not deleted (docs/resources.md, judged
    /// with `monitor gc`'s default window), and of those, the ones whose cleanup failed;
    /// left out when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub orphaned_resources: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub cleanup_failed_resources: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A completed state whose latest verify failed, and nothing done about it since.
pub struct Drifted {
    pub build_id: String,
    pub state: Option<u8>,
    pub message: Option<String>,
}

/// The builds [`Store::counted_builds`] selects (each `None`: any).
pub struct Selection<'a> {
    pub cloud: Option<&'a str>,
    pub image: Option<&'a str>,
    pub plan: Option<&'a str>,
}

/// A build the statistics count: its plan (hash and name) and whether it is finished
/// (completed or cancelled).
pub struct Counted {
    pub build_id: String,
    pub plan_hash: String,
    pub plan_name: String,
    pub finished: bool,
}

/// One event as the statistics read it, borrowed from the row.
pub struct CountedEvent<'r> {
    pub build_id: &'r str,
    pub at: SystemTime,
    pub kind: EventKind,
    pub state: Option<u8>,
    /// A failure's message (other kinds: `None`).
    pub fail_message: Option<&'r str>,
    pub category: Option<&'r str>,
    pub duration_ms: Option<u64>,
    /// A failure that scheduled a retry has its time.
    pub retry_scheduled: bool,
}

fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<Option<&'r str>> {
    r.get_ref(i)?
        .as_str_or_null()
        .map_err(|e| crate::Error::Corrupt(format!("events column {i}: {e}")))
}

/// Seconds since the epoch, for SQLite's date arithmetic.
fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Store {
    /// The builds that are blocked or running, by id (what `monitor check` looks at).
    pub fn watched(&self) -> Result<Vec<Build>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM builds WHERE status IN ('blocked', 'running') ORDER BY build_id",
            super::BUILD_COLUMNS
        ))?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(super::build_from_row(r)?);
        }
        Ok(out)
    }

    /// Every build's status row, by id: only the columns a row shows, the ages computed
    /// by SQLite, so that 100,000 builds stay within the 100 ms budget.
    pub fn status_rows(&self, now: SystemTime) -> Result<Vec<StatusRow>> {
        // When each build last passed its verify commands: joined only when some build
        // ever did (the partial index answers that at once), so fleets without verify
        // commands pay nothing for the column.
        let any_verified: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM events WHERE kind = 'verified')",
            [],
            |r| r.get(0),
        )?;
        let (verified, join) = if any_verified {
            (
                "(SELECT MAX(0, CAST(:now - (julianday(v.at) - 2440587.5) * 86400.0 AS INTEGER)))",
                "LEFT JOIN (SELECT build_id AS vid, MAX(at) AS at FROM events WHERE kind = 'verified'
                            GROUP BY build_id) v ON v.vid = builds.build_id",
            )
        } else {
            ("NULL", "")
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT build_id, status, current_state, active_state, attempt,
                    MAX(0, CAST(:now - (julianday(updated_at) - 2440587.5) * 86400.0 AS INTEGER)),
                    lease_owner, {verified}
             FROM builds {join} ORDER BY build_id"
        ))?;
        let mut rows = stmt.query(named_params! {":now": epoch_seconds(now)})?;
        let mut out = Vec::with_capacity(1024);
        let seconds = |v: i64| u64::try_from(v).unwrap_or(0);
        while let Some(r) = rows.next()? {
            out.push(StatusRow {
                build_id: r.get(0)?,
                status: text(r, 1)?.unwrap_or_default().parse()?,
                current_state: r.get(2)?,
                active_state: r.get(3)?,
                attempt: r.get(4)?,
                age_seconds: seconds(r.get(5)?),
                holder: r.get(6)?,
                verified_seconds_ago: r.get::<_, Option<i64>>(7)?.map(seconds),
                orphaned_resources: 0,
                cleanup_failed_resources: 0,
            });
        }
        Ok(out)
    }

    /// The drifted states: a completed state whose latest verify failed (its latest
    /// drift), and nothing done about it since (no pass, no new completion of it, no
    /// rerun, force, reset or rollback), by build and state.
    pub fn drifted(&self) -> Result<Vec<Drifted>> {
        let mut stmt = self.conn.prepare(
            "SELECT d.build_id, d.state, d.message FROM events d
             WHERE d.kind = 'drift' AND NOT EXISTS (
                 SELECT 1 FROM events l WHERE l.build_id = d.build_id AND l.seq > d.seq
                   AND (l.kind IN ('rerun', 'force', 'reset', 'rollback')
                        OR (l.state = d.state AND l.kind IN ('verified', 'complete', 'skip', 'reused', 'drift'))))
             ORDER BY d.build_id, d.state",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Drifted {
                build_id: r.get(0)?,
                state: r.get(1)?,
                message: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many builds have each status (a status no build has is missing).
    pub fn builds_by_status(&self) -> Result<HashMap<String, u64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM builds GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The builds of the cloud, image and plan asked for.
    pub fn counted_builds(&self, which: &Selection<'_>) -> Result<Vec<Counted>> {
        let mut stmt = self.conn.prepare(
            "SELECT b.build_id, b.plan_hash, b.status IN ('completed', 'cancelled'), p.name
             FROM builds b JOIN plans p ON p.hash = b.plan_hash
             WHERE (:cloud IS NULL OR b.cloud = :cloud) AND (:image IS NULL OR b.image = :image)
               AND (:plan IS NULL OR p.name = :plan)",
        )?;
        let rows = stmt.query_map(
            named_params! {":cloud": which.cloud, ":image": which.image, ":plan": which.plan},
            |r| {
                Ok(Counted {
                    build_id: r.get(0)?,
                    plan_hash: r.get(1)?,
                    finished: r.get(2)?,
                    plan_name: r.get(3)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Each event at or after `since` of a kind the statistics count, by build and then
    /// in order, to `each`: one pass, nothing but the row's own text borrowed.
    pub fn counted_events(
        &self,
        since: SystemTime,
        mut each: impl FnMut(CountedEvent<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT build_id, at, kind, state, CASE WHEN kind = 'fail' THEN message END, category,
                    duration_ms, until
             FROM events
             WHERE at >= :since AND kind IN ('init', 'start', 'complete', 'fail', 'retry', 'skip',
                 'cancel', 'rollback', 'force', 'reset', 'prerequisite')
             ORDER BY build_id, seq",
        )?;
        let mut rows = stmt.query(named_params! {":since": time::format(since)})?;
        while let Some(r) = rows.next()? {
            each(CountedEvent {
                build_id: text(r, 0)?.unwrap_or_default(),
                at: time::parse(text(r, 1)?.unwrap_or_default())?,
                kind: text(r, 2)?.unwrap_or_default().parse()?,
                state: r.get(3)?,
                fail_message: text(r, 4)?,
                category: text(r, 5)?,
                duration_ms: r.get(6)?,
                retry_scheduled: text(r, 7)?.is_some(),
            })?;
        }
        Ok(())
    }
}

/// What `monitor status --tree` draws the graph of dependencies from
/// (`crate::parents::graph`), in four reads however many builds there are.
pub struct GraphFacts {
    pub builds: Vec<Build>,
    /// Plans by hash.
    pub plans: HashMap<String, Plan>,
    /// Metadata by build, of builds whose plan has templates to resolve.
    pub meta: HashMap<String, BTreeMap<String, String>>,
    /// `init-state --after` by build.
    pub after: HashMap<String, Vec<String>>,
    /// The builds whose outputs are revoked now (`crate::outputs::revoked`): a build
    /// that waits for one of them waits until it makes new ones.
    /// By build, the reason.
    pub revoked: HashMap<String, String>,
    /// The status of each build archived from here (`completed` or `cancelled`).
    pub archived: HashMap<String, String>,
}

impl Store {
    pub fn graph_facts(&self) -> Result<GraphFacts> {
        let mut builds = Vec::new();
        {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {} FROM builds ORDER BY build_id",
                super::BUILD_COLUMNS
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                builds.push(super::build_from_row(r)?);
            }
        }
        let mut plans = HashMap::new();
        {
            let mut stmt = self.conn.prepare("SELECT hash, body FROM plans")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let hash: String = r.get(0)?;
                plans.insert(hash, Plan::from_json(&r.get::<_, String>(1)?)?);
            }
        }
        let templated: std::collections::HashSet<&str> = plans
            .iter()
            .filter(|(_, p)| {
                p.states
                    .iter()
                    .any(|s| s.after.iter().any(|a| a.contains('{')))
            })
            .map(|(h, _)| h.as_str())
            .collect();
        let mut meta: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        if !templated.is_empty() {
            let wanted: std::collections::HashSet<&str> = builds
                .iter()
                .filter(|b| templated.contains(b.plan_hash.as_str()))
                .map(|b| b.build_id.as_str())
                .collect();
            let mut stmt = self
                .conn
                .prepare("SELECT build_id, key, value FROM build_meta")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                if wanted.contains(id.as_str()) {
                    meta.entry(id).or_default().insert(r.get(1)?, r.get(2)?);
                }
            }
        }
        let mut after = HashMap::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT build_id, after FROM events WHERE kind = 'init' AND after IS NOT NULL",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                let list: Vec<String> =
                    serde_json::from_str(&r.get::<_, String>(1)?).map_err(|e| {
                        Error::Corrupt(format!("build '{id}': its init event's after: {e}"))
                    })?;
                after.insert(id, list);
            }
        }
        // A revocation stands until the build starts a state or records an output.
        let mut stmt = self.conn.prepare(
            "SELECT r.build_id, COALESCE(r.message, '') FROM events r WHERE r.kind = 'revoke' AND NOT EXISTS (
                 SELECT 1 FROM events l WHERE l.build_id = r.build_id AND l.seq > r.seq
                   AND l.kind IN ('start', 'output', 'reused'))",
        )?;
        let revoked = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare("SELECT build_id, status FROM archived")?;
        let archived = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(GraphFacts {
            builds,
            plans,
            meta,
            after,
            revoked,
            archived,
        })
    }
}

/// The builds whose last completion of a state, still standing (the build is at or past
/// it), recorded one of `parent`'s outputs `values` with the value it has: those a
/// revocation of them makes stale. A build's own outputs are not its input.
pub(super) fn consumers(
    conn: &Connection,
    parent: &str,
    values: &BTreeMap<String, String>,
) -> Result<Vec<crate::alerts::Consumer>> {
    // A prefilter on the text (ids hold no '%'; '_' matches itself among others), then
    // each manifest read for what it says.
    let mut stmt = conn.prepare_cached(
        "SELECT e.build_id, e.state, e.inputs FROM events e
          WHERE e.kind = 'complete' AND e.build_id != :parent AND e.inputs LIKE :pat
            AND e.seq = (SELECT MAX(l.seq) FROM events l
                          WHERE l.build_id = e.build_id AND l.kind = 'complete'
                            AND l.state = e.state)
          ORDER BY e.build_id, e.state",
    )?;
    let pat = format!("%\"{parent}:%");
    let rows = stmt
        .query_map(named_params! {":parent": parent, ":pat": pat}, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out: Vec<crate::alerts::Consumer> = Vec::new();
    for (child, state, raw) in rows {
        let Some(state) = state else { continue };
        let Ok(m) = serde_json::from_str::<crate::manifest::Manifest>(&raw) else {
            continue;
        };
        let mut keys = Vec::new();
        for (key, value) in values {
            let d: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(value.as_bytes()).into();
            let shown = crate::manifest::shown(value, &d);
            if m.builds.get(&format!("{parent}:{key}")) == Some(&Some(shown.clone())) {
                keys.push((key.clone(), shown));
            }
        }
        if keys.is_empty() {
            continue;
        }
        let Some(b) = super::load_build(conn, &child)? else {
            continue;
        };
        if b.current_state.is_none_or(|c| c < state) {
            continue;
        }
        let plan = super::load_plan(conn, &b.plan_hash)?;
        out.push(crate::alerts::Consumer {
            build: b,
            plan,
            state,
            outputs: keys,
            running: false,
        });
    }
    // And the builds running a state that consumes them now: its result will stand on
    // outputs that are gone.
    let mut stmt = conn.prepare_cached(
        "SELECT build_id FROM builds WHERE status = 'running' AND build_id != :parent ORDER BY build_id",
    )?;
    let running = stmt
        .query_map(named_params! {":parent": parent}, |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for id in running {
        let Some(b) = super::load_build(conn, &id)? else {
            continue;
        };
        let Some(state) = b.active_state else {
            continue;
        };
        let plan = super::load_plan(conn, &b.plan_hash)?;
        let entries = plan
            .state(state)
            .and_then(|s| s.inputs.as_ref())
            .map(|i| i.builds.clone())
            .unwrap_or_default();
        if entries.is_empty()
            || out
                .iter()
                .any(|c| c.build.build_id == id && c.state == state)
        {
            continue;
        }
        let meta = super::load_meta(conn, &id)?;
        let child = crate::deps::Child::of(&b, &meta);
        let mut keys = Vec::new();
        for e in &entries {
            let Ok(c) = crate::deps::parse_consumed(e) else {
                continue;
            };
            if crate::deps::resolve(&c.build, &child).is_ok_and(|p| p == parent) {
                if let Some(v) = values.get(&c.key) {
                    keys.push((c.key.clone(), v.clone()));
                }
            }
        }
        if !keys.is_empty() {
            out.push(crate::alerts::Consumer {
                build: b,
                plan,
                state,
                outputs: keys,
                running: true,
            });
        }
    }
    Ok(out)
}
