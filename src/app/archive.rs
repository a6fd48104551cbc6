//! `monitor archive` and `monitor unarchive`: old completed and cancelled builds move to
//! the remote's `archive/` prefix and leave the working tables; any one comes back whole.
//!
//! For each build: its snapshot is written create-only to `archive/builds/ID.json`, read
//! back and compared byte for byte, and only then removed locally, in one transaction
//! ([`Store::remove_archived`]). A run killed anywhere loses nothing: before the write
//! the build is untouched; after it, a rerun finds the object, checks that it is this
//! build's snapshot byte for byte, and goes on. See docs/fleet.md.
//!
//! `monitor prune-tasks` is the task results' own retention: in each build that holds
//! task results older than a cut-off, one write removes them and appends a `pruned`
//! event that says how many and up to when (locally, or through the remote in remote
//! mode, like any other write).

use std::time::SystemTime;

use serde::Serialize;

use crate::remote::Remote;
use crate::store::{Archived, Removed, Store};
use crate::{time, Error, Result};

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Builds that matched the age and status filters.
    pub matched: usize,
    pub archived: Vec<String>,
    /// Builds written to the archive but changed before they could be removed (archive
    /// them again later), with why.
    pub skipped: Vec<(String, String)>,
    /// Builds that could not be archived, with the error; they stay as they were.
    pub failed: Vec<(String, String)>,
    pub size_before_bytes: u64,
    pub size_after_bytes: u64,
    /// `--vacuum` ran and its space is back on the disk.
    pub vacuumed: bool,
    /// `--vacuum` ran, but a reader held the database: the space comes back once it
    /// closes and a later write checkpoints.
    pub vacuum_deferred: bool,
}

/// Archive the builds completed before `completed` or cancelled before `cancelled`.
/// `progress(done, total)` after each build.
pub fn archive(
    store: &mut Store,
    remote: &Remote,
    completed: Option<SystemTime>,
    cancelled: Option<SystemTime>,
    vacuum: bool,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Report> {
    let mut report = Report {
        size_before_bytes: store.size_bytes(),
        ..Report::default()
    };
    // In remote mode this database is a cache: what is archived is the remote's copy as
    // it is now, not what this machine last saw (a build forced back to pending on
    // another machine is no longer completed).
    // A build whose copy cannot be pulled here (or a remote that cannot be listed) is
    // pulled again below if it is a candidate, and reported then.
    let _ = crate::sync::pull_all(store, remote, &|_, _| {});
    let ids = store.archive_candidates(completed, cancelled)?;
    report.matched = ids.len();
    let still_due = |store: &Store, id: &str| -> Result<bool> {
        Ok(store.build(id)?.is_some_and(|b| match b.status {
            crate::model::Status::Completed => completed.is_some_and(|c| b.updated_at < c),
            crate::model::Status::Cancelled => cancelled.is_some_and(|c| b.updated_at < c),
            _ => false,
        }))
    };
    for (i, id) in ids.iter().enumerate() {
        // Pulled once more right before it is archived: the copy that goes is the
        // newest, and a build that went on elsewhere since stays.
        let fresh = match crate::sync::pull(store, remote, id, false) {
            // No working copy there: a build of this database alone.
            Ok(_) | Err(Error::NotOnRemote { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        if fresh.is_ok() && !still_due(store, id)? {
            let now = store
                .build(id)?
                .map_or("gone".into(), |b| b.status.to_string());
            report.skipped.push((
                id.clone(),
                format!("its remote copy went on (now {now}): it is not archived"),
            ));
            progress(i + 1, ids.len());
            continue;
        }
        match fresh.and_then(|()| archive_one(store, remote, id)) {
            Ok(Removed::Yes) => report.archived.push(id.clone()),
            Ok(Removed::Changed) => report.skipped.push((
                id.clone(),
                "it changed while it was archived; the next run archives it again".into(),
            )),
            Ok(Removed::Gone) => {
                report
                    .skipped
                    .push((id.clone(), "another run archived it".into()));
            }
            Err(e @ Error::Remote(_)) => {
                // The remote is unavailable: the rest would fail alike, each after its
                // timeout. Stop; a rerun goes on from here.
                report.failed.push((id.clone(), e.to_string()));
                for rest in &ids[i + 1..] {
                    report.failed.push((
                        rest.clone(),
                        "not attempted: the remote was unavailable".into(),
                    ));
                }
                progress(ids.len(), ids.len());
                break;
            }
            Err(e) => report.failed.push((id.clone(), e.to_string())),
        }
        progress(i + 1, ids.len());
    }
    if vacuum {
        let whole = store.vacuum()?;
        report.vacuumed = whole;
        report.vacuum_deferred = !whole;
    }
    report.size_after_bytes = store.size_bytes();
    Ok(report)
}

/// What a task-results retention run did.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// The cut-off: task results recorded before it were removed.
    #[serde(with = "crate::time::rfc3339")]
    pub before: SystemTime,
    /// Builds that held older task results.
    pub matched: usize,
    /// Per build pruned: how many task results left.
    pub pruned: Vec<(String, u64)>,
    /// Builds that could not be pruned, with the error; they stay as they were.
    pub failed: Vec<(String, String)>,
    /// The exit code of the first failure.
    #[serde(skip)]
    pub failure_code: Option<i32>,
    pub size_before_bytes: u64,
    pub size_after_bytes: u64,
}

/// Remove the task results recorded before `before` from every build that has some,
/// one write per build (`pruned` event). `progress(done, total)` after each build.
pub fn prune_tasks(
    store: &mut crate::sync::Writer,
    before: SystemTime,
    actor: &crate::context::Actor,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Pruned> {
    // Stored to the millisecond: the cut-off the `pruned` event keeps is this one.
    let before = time::truncate_millis(before);
    let mut report = Pruned {
        before,
        matched: 0,
        pruned: Vec::new(),
        failed: Vec::new(),
        failure_code: None,
        size_before_bytes: store.store().size_bytes(),
        size_after_bytes: 0,
    };
    let ids = store.store().builds_with_tasks_before(before)?;
    report.matched = ids.len();
    for (i, id) in ids.iter().enumerate() {
        let t = crate::model::Transition::PruneTasks { before, count: 0 };
        match store.transition(id, &t, actor, &crate::model::Ctx::live()) {
            Ok(b) => {
                // The write's own event says how many left (none: nothing was old any
                // more once the remote's copy was pulled).
                let n = store
                    .store()
                    .events_since(id, b.serial)?
                    .last()
                    .filter(|e| {
                        e.kind == crate::model::EventKind::Pruned && e.until == Some(before)
                    })
                    .and_then(|e| e.count);
                if let Some(n) = n {
                    report.pruned.push((id.clone(), n));
                }
            }
            Err(e) => {
                report.failure_code.get_or_insert(e.exit_code());
                report.failed.push((id.clone(), e.to_string()));
            }
        }
        progress(i + 1, ids.len());
    }
    report.size_after_bytes = store.store().size_bytes();
    Ok(report)
}

fn archive_one(store: &mut Store, remote: &Remote, id: &str) -> Result<Removed> {
    let snap = store.snapshot(id)?;
    let bytes = remote.encode(&snap);
    let key = Remote::archive_key(id);
    let written = remote.put_archive(id, bytes.clone())?;
    let back = remote.get_archive(id)?.ok_or_else(|| {
        Error::Remote(format!(
            "remote {}: {key} was written but cannot be read back; the build stays here",
            remote.name()
        ))
    })?;
    if back != bytes && !written {
        // Ours, from before: archived, then brought back or left here by a write that
        // came between the archive and the removal, and changed since. The newer copy
        // of the same build replaces it; anything else stays as it is.
        if let Ok(theirs) = remote.decode(&back) {
            let newer = theirs.lineage == snap.lineage
                && theirs.serial < snap.serial
                && crate::snapshot::compare(&snap.events, &theirs.events).agree();
            if newer {
                remote.replace_archive(id, bytes.clone(), &back)?;
                return finish_archive(store, remote, &snap, key);
            }
        }
    }
    if back != bytes {
        return Err(Error::RemoteChanged(if written {
            format!(
                "remote {}: {key} reads back different from what was written; the build stays here",
                remote.name()
            )
        } else {
            let theirs = remote.decode(&back).map(|s| s.serial).ok();
            format!(
                "remote {}: {key} exists and holds another copy of build '{id}' (serial {}, this one {}): it was archived before, brought back and changed; move that object aside, then archive again. The build stays here",
                remote.name(),
                theirs.map_or("unreadable".into(), |s| s.to_string()),
                snap.serial
            )
        }));
    }
    finish_archive(store, remote, &snap, key)
}

/// The snapshot is safe on the remote as `key`: remove the build here.
fn finish_archive(
    store: &mut Store,
    remote: &Remote,
    snap: &crate::snapshot::Snapshot,
    key: String,
) -> Result<Removed> {
    kill_point();
    store.remove_archived(&Archived {
        build_id: snap.build_id.clone(),
        lineage: snap.lineage.clone(),
        serial: snap.serial,
        status: snap.build.status.to_string(),
        remote: remote.name().to_string(),
        object: key,
        archived_at: time::format(SystemTime::now()),
    })
}

/// Tests only (the `fail-points` feature): `BUILDSTATE_TEST_KILL_AFTER_ARCHIVED=N` kills
/// this process with SIGKILL after the Nth build's snapshot is safe on the remote and
/// before it is removed here, the worst moment for a kill -9 (tests/it/archive.rs;
/// docs/decisions.md).
fn kill_point() {
    #[cfg(feature = "fail-points")]
    if let Some(n) = std::env::var("BUILDSTATE_TEST_KILL_AFTER_ARCHIVED")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if DONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= n {
            // SAFETY: kill(2) on this process with a valid signal number.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// What `unarchive` did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub build_id: String,
    pub serial: u64,
    pub events: usize,
}

/// Bring an archived build back whole from `remote`: history, metadata, serial. Works
/// on a database that never had it too (another machine's archive).
pub fn unarchive(store: &mut Store, remote: &Remote, build_id: &str) -> Result<Restored> {
    crate::model::validate_build_id(build_id)?;
    let bytes = remote
        .get_archive(build_id)?
        .ok_or_else(|| Error::NotArchived {
            build_id: build_id.to_string(),
            remote: remote.name().to_string(),
            object: Remote::archive_key(build_id),
        })?;
    let snap = remote.decode(&bytes).map_err(|e| match e {
        Error::InvalidSnapshot(why) => Error::InvalidSnapshot(format!(
            "{} on remote {} is not a snapshot this buildstate accepts ({why}); nothing was written and the build stays archived: restore the object from a copy, or check BUILDSTATE_SNAPSHOT_KEY if it was signed",
            Remote::archive_key(build_id),
            remote.name()
        )),
        other => other,
    })?;
    if snap.build_id != build_id {
        return Err(Error::InvalidSnapshot(format!(
            "the archive object for build '{build_id}' holds build '{}'",
            snap.build_id
        )));
    }
    store.import(&snap, false).map_err(|e| match e {
        // The import's own advice is about a remote's working copy (pull, push): here
        // the other side is the archive, which neither command touches.
        Error::Diverged(_) => {
            let here = store.build(build_id).ok().flatten();
            let why = match &here {
                Some(b) if b.lineage == snap.lineage => format!(
                    "the copy of '{build_id}' in this database went on since it was archived (serial {} here, {} archived)",
                    b.serial, snap.serial
                ),
                Some(b) => format!(
                    "this database holds another build named '{build_id}' (lineage {} here, {} archived)",
                    b.lineage, snap.lineage
                ),
                None => format!("this database's copy of '{build_id}' disagrees with the archive"),
            };
            Error::Diverged(format!(
                "{why}; nothing was written, and the archive on remote {} is as it was. Bring the archived build back into another database (`monitor unarchive {build_id} --remote {} --db OTHER.db`), or keep the one here",
                remote.name(),
                remote.name()
            ))
        }
        other => other,
    })?;
    store.forget_archived(build_id)?;
    Ok(Restored {
        build_id: build_id.to_string(),
        serial: snap.serial,
        events: snap.events.len(),
    })
}
