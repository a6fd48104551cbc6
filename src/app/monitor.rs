//! What the `monitor` cron job sees: builds that need a person, builds that look stuck,
//! a status table, and Prometheus metrics. Queries read the `builds` table by its status
//! index, so they stay fast with 100,000 builds in one database (docs/performance.md).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::model::Status;
use crate::notify::{self, AlertKind, NewAlert};
use crate::plan::Plan;
use crate::store::Store;
use crate::{exit, time, Error, Result};

/// One build, for people (`monitor status`) and scripts (`--json`).
pub use crate::store::fleet::StatusRow as Row;

/// Every build, by id: only the columns a status row shows, the age computed by SQLite,
/// so that 100,000 builds stay within the 100 ms budget (docs/performance.md).
pub fn status(store: &Store, now: SystemTime) -> Result<Vec<Row>> {
    let mut rows = store.status_rows(now)?;
    // The builds with resources: as `monitor gc` judges them by default (builds without
    // any cost one empty index lookup).
    let ledgers = store.all_resources(now, crate::resources::DEFAULT_WINDOW)?;
    if !ledgers.is_empty() {
        let counts: HashMap<&str, (u32, u32)> = ledgers
            .iter()
            .map(|(id, ledger)| (id.as_str(), orphan_counts(ledger)))
            .collect();
        for r in &mut rows {
            if let Some(&(orphaned, failed)) = counts.get(r.build_id.as_str()) {
                r.orphaned_resources = orphaned;
                r.cleanup_failed_resources = failed;
            }
        }
    }
    Ok(rows)
}

/// How many of a judged ledger's resources are orphans still there, and how many of
/// those failed their cleanup.
pub fn orphan_counts(ledger: &[crate::resources::Resource]) -> (u32, u32) {
    let orphans = ledger.iter().filter(|r| r.exists() && r.orphaned.is_some());
    let failed = orphans
        .clone()
        .filter(|r| r.status == crate::resources::Health::CleanupFailed)
        .count();
    (orphans.count() as u32, failed as u32)
}

/// Something a person should look at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub build_id: String,
    /// blocked, cancelled, stuck
    pub what: &'static str,
    pub state: Option<u8>,
    pub reason: String,
}

/// Plans by hash, loaded once per run.
struct Plans<'a> {
    store: &'a Store,
    cache: HashMap<String, Plan>,
}

impl Plans<'_> {
    fn get(&mut self, hash: &str) -> Result<&Plan> {
        if !self.cache.contains_key(hash) {
            let p = self.store.plan(hash)?;
            self.cache.insert(hash.to_string(), p);
        }
        Ok(&self.cache[hash])
    }
}

/// Find builds that need a person (blocked) and builds that look stuck: running longer
/// than `factor` times their state's expected duration, or whose lease expired with
/// nobody taking over. A stuck build is alerted once per episode (its serial).
pub fn check(store: &Store, now: SystemTime, factor: f64) -> Result<Vec<Finding>> {
    let (findings, alerts) = findings(store, now, factor)?;
    crate::store::outbox::queue(store, &alerts, now)?;
    Ok(findings)
}

/// `monitor check`'s default: a state running longer than this many times its expected
/// duration is stuck (the HTML report uses it too).
pub const STUCK_FACTOR: f64 = 3.0;

/// What [`check`] finds, and the stuck alerts it would queue, without writing anything
/// (the HTML report reads it).
pub fn findings(
    store: &Store,
    now: SystemTime,
    factor: f64,
) -> Result<(Vec<Finding>, Vec<NewAlert>)> {
    let mut plans = Plans {
        store,
        cache: HashMap::new(),
    };
    let mut findings = Vec::new();
    let mut alerts = Vec::new();
    for r in store.watched()? {
        let plan = plans.get(&r.plan_hash)?;
        let state = r.active_state;
        if r.status == Status::Blocked {
            findings.push(Finding {
                build_id: r.build_id.clone(),
                what: "blocked",
                state,
                reason: r
                    .blocked_reason
                    .clone()
                    .unwrap_or_else(|| "needs a person".into()),
            });
            continue;
        }
        let Some(s) = state.and_then(|s| plan.state(s)) else {
            continue;
        };
        let running_for = r
            .attempt_started_at
            .map(|t| now.duration_since(t).unwrap_or_default());
        let limit = s.expected.mul_f64(factor.max(1.0));
        let reason = match (r.lease_expires_at, running_for) {
            (Some(exp), _) if exp <= now => Some(format!(
                "its lease ({}) expired at {} and nobody took over",
                r.lease_owner.as_deref().unwrap_or("?"),
                time::format(exp)
            )),
            (_, Some(d)) if d > limit => Some(format!(
                "{} has run for {}, more than {factor}x its expected {}",
                plan.label(s.id),
                time::format_duration(d),
                time::format_duration(s.expected)
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            if plan.alerts_for(s.id).contains(&AlertKind::Stuck) {
                let actor = crate::environment::actor("monitor");
                alerts.push(NewAlert {
                    kind: AlertKind::Stuck,
                    build_id: Some(r.build_id.clone()),
                    dedupe_key: format!("{}:{}:stuck", r.build_id, r.serial),
                    payload: notify::payload(AlertKind::Stuck, &r, plan, &actor, Some(&reason)),
                });
            }
            findings.push(Finding {
                build_id: r.build_id,
                what: "stuck",
                state,
                reason,
            });
        }
    }
    // Drifted: its alert went out when the drift was recorded.
    for d in store.drifted()? {
        findings.push(Finding {
            build_id: d.build_id,
            what: "drifted",
            state: d.state,
            reason: format!(
                "its verify failed: {}; it reruns from there",
                crate::decide::headline(d.message.as_deref().unwrap_or("no output"), 200)
            ),
        });
    }
    Ok((findings, alerts))
}

/// Prometheus text exposition of the database: builds by status, per-state durations
/// and retries, the alert outbox.
pub fn metrics(store: &Store, now: SystemTime) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP buildstate_builds Builds by status.\n# TYPE buildstate_builds gauge"
    );
    let counts = store.builds_by_status()?;
    for s in crate::model::Status::ALL.iter().map(|s| s.as_str()) {
        let _ = writeln!(
            out,
            "buildstate_builds{{status=\"{s}\"}} {}",
            counts.get(s).copied().unwrap_or(0)
        );
    }
    // Counters: what the history holds and what archived builds had counted, by plan
    // and state, so that none goes backwards when builds leave or come back.
    let counters = store.metric_counters()?;
    let series = |c: &crate::store::Counter| {
        format!(
            "plan=\"{}\",state=\"{}\"",
            crate::stats::label(&c.plan),
            c.state.map_or("none".into(), |s| s.to_string())
        )
    };
    let _ = writeln!(
        out,
        "# HELP buildstate_state_duration_seconds Time from start to completion of a state's successful attempts.\n# TYPE buildstate_state_duration_seconds summary"
    );
    for c in counters.iter().filter(|c| c.metric == "duration") {
        let l = series(c);
        let _ = writeln!(
            out,
            "buildstate_state_duration_seconds_sum{{{l}}} {:.3}\nbuildstate_state_duration_seconds_count{{{l}}} {}",
            c.sum_ms as f64 / 1000.0,
            c.n
        );
    }
    let _ = writeln!(out, "# HELP buildstate_retries_total Attempts after a state's first.\n# TYPE buildstate_retries_total counter");
    for c in counters.iter().filter(|c| c.metric == "retries") {
        let _ = writeln!(out, "buildstate_retries_total{{{}}} {}", series(c), c.n);
    }
    let _ = writeln!(
        out,
        "# HELP buildstate_resources Cloud resources builds recorded (docs/resources.md), by status: orphaned ones are present but nobody will use them (as monitor gc judges with its default window).\n# TYPE buildstate_resources gauge"
    );
    let mut by_status: HashMap<&str, u64> = HashMap::new();
    for (_, ledger) in store.all_resources(now, crate::resources::DEFAULT_WINDOW)? {
        for r in ledger {
            let status = match (r.status, &r.orphaned) {
                (crate::resources::Health::Present, Some(_)) => "orphaned",
                (s, _) => s.as_str(),
            };
            *by_status.entry(status).or_default() += 1;
        }
    }
    for s in [
        "present",
        "orphaned",
        "cleanup_failed",
        "missing",
        "deleted",
    ] {
        let _ = writeln!(
            out,
            "buildstate_resources{{status=\"{s}\"}} {}",
            by_status.get(s).copied().unwrap_or(0)
        );
    }
    let (pending, gave_up, oldest) = notify::depth(store, now)?;
    let _ = writeln!(out, "# HELP buildstate_alerts_pending Alerts waiting for delivery.\n# TYPE buildstate_alerts_pending gauge\nbuildstate_alerts_pending {pending}");
    let _ = writeln!(out, "# HELP buildstate_alerts_gave_up Alerts given up after their retries.\n# TYPE buildstate_alerts_gave_up gauge\nbuildstate_alerts_gave_up {gave_up}");
    let _ = writeln!(
        out,
        "# HELP buildstate_alerts_oldest_pending_age_seconds Age of the oldest alert waiting for delivery.\n# TYPE buildstate_alerts_oldest_pending_age_seconds gauge\nbuildstate_alerts_oldest_pending_age_seconds {}",
        oldest.map_or(0.0, |d| d.as_secs_f64())
    );
    Ok(out)
}

/// Write `text` to `path` the node_exporter textfile way: a temporary file beside it,
/// renamed over it, so the collector never reads half a file. Its mode is 0666 less the
/// umask, like any file a user writes (node_exporter rarely runs as root).
pub fn write_textfile(path: &std::path::Path, text: &str) -> Result<()> {
    write_whole(path, text.as_bytes(), ".buildstate-metrics")
}

/// Write `path` whole or not at all: a temporary file (`prefix`, mode 0666 less the
/// umask) beside it, then renamed over it. A path that exists and is not a regular file
/// (a directory, a device such as /dev/null, a symlink, a pipe) is refused: renaming over
/// it would replace it, not write into it.
pub fn write_whole(path: &std::path::Path, bytes: &[u8], prefix: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_file() {
            return Err(crate::Error::InvalidInput(format!(
                "{} exists and is not a regular file (a directory, device, symlink or pipe): give the path of a file to write",
                crate::redact::echo(&path.display().to_string())
            )));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let shown = |p: &std::path::Path| crate::redact::echo(&p.display().to_string());
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(crate::Error::InvalidInput(format!(
                "cannot write {}: {} is not a directory",
                shown(path),
                shown(dir)
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::Error::InvalidInput(format!(
                "cannot write {}: the directory {} does not exist: create it first (mkdir -p) or give another path",
                shown(path),
                shown(dir)
            )))
        }
        Err(_) => {}
    }
    // The temporary file is ours, not the caller's: errors name the file asked for, with
    // the system's reason alone (tempfile adds its own name to it).
    let io = |source: std::io::Error| crate::Error::Io {
        path: path.to_path_buf(),
        source: source.raw_os_error().map_or_else(
            || std::io::Error::from(source.kind()),
            std::io::Error::from_raw_os_error,
        ),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// An age for people, in its two largest units: "42s", "3m 5s", "2h 5m", "4d 1h".
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `monitor status --tree` for people: each build that nobody it waits for is under at
/// the top, and under each build the builds that wait for it, with what they wait for
/// and whether it holds (a build with two parents appears under both).
pub fn write_tree(out: &mut String, nodes: &[crate::parents::Node]) {
    let by_id: HashMap<&str, &crate::parents::Node> =
        nodes.iter().map(|n| (n.build_id.as_str(), n)).collect();
    if nodes.is_empty() {
        out.push_str("no build waits for another (docs/plan.md#dependencies)\n");
        return;
    }
    fn line(n: &crate::parents::Node) -> String {
        match n.current_state {
            Some(s) => format!("{} ({}, last completed state {s})", n.build_id, n.status),
            None => format!("{} ({})", n.build_id, n.status),
        }
    }
    fn walk(
        out: &mut String,
        by_id: &HashMap<&str, &crate::parents::Node>,
        n: &crate::parents::Node,
        depth: usize,
        path: &mut Vec<String>,
    ) {
        for c in &n.children {
            let Some(child) = by_id.get(c.as_str()) else {
                continue;
            };
            let edge = child.parents.iter().find(|e| e.build_id == n.build_id);
            let waits = edge.map_or(String::new(), |e| {
                format!(
                    " waits for {}:{} ({})",
                    e.build_id,
                    e.state,
                    if e.holds { "holds" } else { "not yet" }
                )
            });
            let _ = writeln!(out, "{}└─ {}{waits}", "   ".repeat(depth), line(child));
            if path.contains(c) || depth > 32 {
                continue;
            }
            path.push(c.clone());
            walk(out, by_id, child, depth + 1, path);
            path.pop();
        }
    }
    for root in nodes.iter().filter(|n| n.parents.is_empty()) {
        let _ = writeln!(out, "{}", line(root));
        let mut path = vec![root.build_id.clone()];
        walk(out, &by_id, root, 0, &mut path);
    }
}

/// How many alerts of each state the outbox holds, by delivery state.
pub fn outbox_counts(store: &Store) -> Result<(u64, u64, u64)> {
    crate::store::outbox::counts(store)
}

/// `monitor status` for people: a plain fixed-width table with a header, written in one
/// buffered pass with no string per cell (a layout engine costs 4x the query with 100,000
/// builds: docs/performance.md). The verified column only when some build was ever
/// verified.
pub fn write_table(out: &mut impl std::io::Write, rows: &[Row]) -> std::io::Result<()> {
    let show_verified = rows.iter().any(|r| r.verified_seconds_ago.is_some());
    let derived: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let state = match (r.status, r.active_state, r.current_state) {
                (Status::Running | Status::Waiting | Status::Blocked, Some(a), _) => a.to_string(),
                (_, _, Some(c)) => format!("{c} done"),
                _ => "-".into(),
            };
            let verified = match (show_verified, r.verified_seconds_ago) {
                (true, Some(v)) => age(v),
                (true, None) => "-".into(),
                (false, _) => String::new(),
            };
            (state, age(r.age_seconds), verified)
        })
        .collect();
    let attempt = |r: &Row| {
        if r.attempt > 0 {
            r.attempt.to_string()
        } else {
            "-".into()
        }
    };
    let mut w = [5usize, 6, 5, 7, 3, if show_verified { 8 } else { 0 }];
    for (r, (state, age, verified)) in rows.iter().zip(&derived) {
        w[0] = w[0].max(r.build_id.len());
        w[1] = w[1].max(r.status.as_str().len());
        w[2] = w[2].max(state.len());
        w[3] = w[3].max(if r.attempt > 0 {
            r.attempt.to_string().len()
        } else {
            1
        });
        w[4] = w[4].max(age.len());
        w[5] = w[5].max(verified.len());
    }
    {
        // One formatted write per line (a write per cell costs 10% more with
        // 100,000 rows); the verified column and its separator are empty (width
        // 0) when not shown.
        let sep = if show_verified { "  " } else { "" };
        let mut line = |c: [&str; 7]| {
            writeln!(
                out,
                "{:<a$}  {:<b$}  {:<c$}  {:<d$}  {:<e$}  {:<f$}{sep}{}",
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                c[5],
                c[6],
                a = w[0],
                b = w[1],
                c = w[2],
                d = w[3],
                e = w[4],
                f = w[5]
            )
        };
        line([
            "build",
            "status",
            "state",
            "attempt",
            "age",
            if show_verified { "verified" } else { "" },
            "held by",
        ])?;
        for (r, (state, age, verified)) in rows.iter().zip(&derived) {
            let holder = r.holder.as_deref().unwrap_or("-");
            line([
                &r.build_id,
                r.status.as_str(),
                state,
                &attempt(r),
                age,
                verified,
                holder,
            ])?;
        }
        out.flush()
    }
}

/// `monitor wait`: poll the build every `interval` until it completes (`target` None) or
/// completes state `target`; also stop when it needs a person or `timeout` passes. The
/// build as last seen, the outcome (`reached`, `needs_person`, `timeout`) and its exit
/// code.
pub fn wait(
    store: &mut crate::sync::Writer,
    build_id: &str,
    target: Option<u8>,
    timeout: std::time::Duration,
    interval: std::time::Duration,
) -> Result<(crate::model::Build, &'static str, i32)> {
    let start = Instant::now();
    let mut first = true;
    loop {
        store.refresh(build_id)?;
        let b = store
            .store()
            .build(build_id)?
            .ok_or_else(|| Error::UnknownBuild(build_id.to_string()))?;
        // A state the build's plan does not have (a typo) is never reached:
        // said at once, not after the whole timeout.
        if let (Some(s), true) = (target, first) {
            let plan = store.store().plan(&b.plan_hash)?;
            if plan.state(s).is_none() {
                return Err(Error::InvalidInput(format!(
                    "--until {s}: build '{build_id}' has no state {s}: its plan '{}' has states {}",
                    plan.name,
                    plan.ids()
                )));
            }
        }
        first = false;
        let reached = match target {
            None => b.status == Status::Completed,
            Some(s) => b.current_state.is_some_and(|c| c >= s),
        };
        let outcome = if reached {
            Some(("reached", exit::OK))
        } else if matches!(
            b.status,
            Status::Blocked | Status::Cancelled | Status::Completed
        ) {
            Some(("needs_person", exit::BLOCKED))
        } else if start.elapsed() >= timeout {
            Some(("timeout", exit::TIMEOUT))
        } else {
            None
        };
        if let Some((what, code)) = outcome {
            return Ok((b, what, code));
        }
        std::thread::sleep(
            interval
                .min(timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_use_their_two_largest_units() {
        use super::age;
        assert_eq!(
            [age(42), age(185), age(7500), age(90000)],
            ["42s", "3m 5s", "2h 5m", "1d 1h"]
        );
    }
}
