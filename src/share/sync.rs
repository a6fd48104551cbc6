//! Sharing builds through a [`Remote`]: push, pull and status, the engine behind
//! `sync-cloud`.
//!
//! The store remembers, per remote and build, the ETag and serial it last wrote or read
//! ([`crate::store::RemoteMark`]). A push of a build the remote has never had from us is
//! create-only; any later push is `If-Match` on the remembered ETag. So a push never
//! overwrites a copy written by someone else since we last looked: that is
//! [`Error::RemoteChanged`] (exit 15), and the fix is to pull first. A pull validates the
//! snapshot and then fast-forwards, or refuses a divergent history (exit 16) unless a
//! person takes the remote side.

use serde::Serialize;

use crate::remote::Remote;
use crate::snapshot::Snapshot;
use crate::store::{Imported, RemoteMark, Store};
use crate::{Error, Result};

/// How many requests `--all` keeps in flight.
pub const PARALLEL: usize = 32;

/// What a push or pull did to one build, for people and for `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Synced {
    pub build_id: String,
    /// pushed, unchanged, created, fast_forward, up_to_date, local_ahead, replaced,
    /// archived (a pull of a build archived from here: not brought back)
    pub outcome: &'static str,
    pub local_serial: Option<u64>,
    pub remote_serial: Option<u64>,
    /// Pulls only: whether the object was fetched (`false`: its listed ETag was the one
    /// last synced, so nothing had changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<bool>,
}

/// Push one build. `force`: a person chose the local side of a divergence; the write is
/// still conditional on the remote's current ETag, so it replaces what the person saw,
/// not something written since.
pub fn push(store: &mut Store, remote: &Remote, build_id: &str, force: bool) -> Result<Synced> {
    let snap = store.snapshot(build_id)?;
    let mark = store.remote_mark(remote.name(), build_id)?;
    let expected = if force {
        remote.get(build_id)?.map(|f| f.etag)
    } else {
        if let Some(m) = mark
            .as_ref()
            .filter(|m| m.serial == snap.serial && m.lineage == snap.lineage)
        {
            return Ok(Synced {
                build_id: build_id.to_string(),
                outcome: "unchanged",
                local_serial: Some(snap.serial),
                remote_serial: Some(m.serial),
                fetched: None,
            });
        }
        mark.map(|m| m.etag)
    };
    let etag = match remote.put(build_id, remote.encode(&snap), expected.as_deref()) {
        Ok(etag) => etag,
        Err(e) => match landed_anyway(remote, &snap, Appended::Events, e)? {
            Some(etag) => etag,
            None => {
                // Ours landed and someone wrote on top already: pulling catches up.
                return Ok(Synced {
                    build_id: build_id.to_string(),
                    outcome: "pushed",
                    local_serial: Some(snap.serial),
                    remote_serial: Some(snap.serial),
                    fetched: None,
                });
            }
        },
    };
    record(store, remote, &snap, etag)?;
    Ok(Synced {
        build_id: build_id.to_string(),
        outcome: "pushed",
        local_serial: Some(snap.serial),
        remote_serial: Some(snap.serial),
        fetched: None,
    })
}

/// Whether a write appended events (a transition: its events carry its write id) or
/// changed the shared record without a new serial (a lease renewal, an alert's claim or
/// delivery).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Appended {
    Events,
    No,
}

/// After a write whose outcome is unknown (a conditional write retried after its answer
/// was lost meets 412, or the answer never came): did our write land anyway? Re-read the
/// object. A write that appended events landed if the object's history holds ours (same
/// lineage, our events to the last, which carry this write's id); one that did not
/// landed only if the object is exactly ours (a claim another machine made meanwhile
/// differs in who holds it). `Ok(Some(etag))`: the object is ours as written;
/// `Ok(None)`: ours landed and another writer has written on top since. Otherwise the
/// original error stands.
fn landed_anyway(
    remote: &Remote,
    ours: &Snapshot,
    appended: Appended,
    error: Error,
) -> Result<Option<String>> {
    if !matches!(error, Error::RemoteChanged(_) | Error::Remote(_)) {
        return Err(error);
    }
    let Ok(Some(f)) = remote.get(&ours.build_id) else {
        return Err(error);
    };
    let Ok(theirs) = remote.decode(&f.bytes) else {
        return Err(error);
    };
    if appended == Appended::No {
        return if theirs == *ours {
            Ok(Some(f.etag))
        } else {
            Err(error)
        };
    }
    let last = |s: &Snapshot| crate::snapshot::last_seq(&s.events);
    let holds_ours = theirs.lineage == ours.lineage
        && theirs.serial >= ours.serial
        && last(&theirs) >= last(ours)
        && crate::snapshot::compare(&ours.events, &theirs.events).agree();
    if !holds_ours {
        return Err(error);
    }
    Ok((theirs.serial == ours.serial).then_some(f.etag))
}

fn record(store: &mut Store, remote: &Remote, snap: &Snapshot, etag: String) -> Result<()> {
    store.set_remote_mark(
        remote.name(),
        &snap.build_id,
        &RemoteMark {
            etag,
            serial: snap.serial,
            lineage: snap.lineage.clone(),
        },
    )
}

/// Push every local build that changed since it was last synced with this remote, many
/// at once. One result per build, in id order; `progress(done, total)` after each.
pub fn push_all(
    store: &mut Store,
    remote: &Remote,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<(String, Result<Synced>)>> {
    let mut out = Vec::new();
    let mut todo = Vec::new();
    let mut snaps = Vec::new();
    for (id, _) in store.build_serials()? {
        let snap = store.snapshot(&id)?;
        let mark = store.remote_mark(remote.name(), &id)?;
        match mark {
            Some(m) if m.serial == snap.serial && m.lineage == snap.lineage => out.push((
                id.clone(),
                Ok(Synced {
                    build_id: id,
                    outcome: "unchanged",
                    local_serial: Some(snap.serial),
                    remote_serial: Some(m.serial),
                    fetched: None,
                }),
            )),
            m => {
                todo.push((id, remote.encode(&snap), m.map(|m| m.etag)));
                snaps.push(snap);
            }
        }
    }
    let total = todo.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = || {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        progress(n, total);
    };
    let results = remote.put_many(todo, PARALLEL, &tick);
    for (snap, r) in snaps.into_iter().zip(results) {
        let id = snap.build_id.clone();
        let r = r.and_then(|etag| {
            record(store, remote, &snap, etag)?;
            Ok(Synced {
                build_id: id.clone(),
                outcome: "pushed",
                local_serial: Some(snap.serial),
                remote_serial: Some(snap.serial),
                fetched: None,
            })
        });
        out.push((id, r));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Pull one build from the remote (see [`Store::import`]).
pub fn pull(
    store: &mut Store,
    remote: &Remote,
    build_id: &str,
    take_remote: bool,
) -> Result<Synced> {
    let fetched = remote.get(build_id)?.ok_or_else(|| Error::NotOnRemote {
        build_id: build_id.to_string(),
        remote: remote.name().to_string(),
    })?;
    import_fetched(store, remote, build_id, fetched, take_remote)
}

fn import_fetched(
    store: &mut Store,
    remote: &Remote,
    build_id: &str,
    fetched: crate::remote::Fetched,
    take_remote: bool,
) -> Result<Synced> {
    let snap = remote.decode(&fetched.bytes)?;
    if snap.build_id != build_id {
        return Err(Error::InvalidSnapshot(format!(
            "the object for build '{build_id}' holds build '{}'",
            snap.build_id
        )));
    }
    // A build archived from here is not brought back by a pull of the copy it was
    // archived from (remote mode leaves that copy); a newer copy is a build that went on.
    if let Some(a) = store.archived(build_id)? {
        // An archived id keeps its identity: another build under the same id (another
        // remote's, a re-created one) would stand beside the archive record, and
        // unarchive could no longer say which is which.
        if a.lineage != snap.lineage {
            return Err(Error::Conflict {
                build_id: build_id.to_string(),
                field: "lineage".into(),
                existing: format!("{} (archived to {} as {})", a.lineage, a.remote, a.object),
                requested: format!("{} (on remote {})", snap.lineage, remote.name()),
                hint: "; that id belongs to a build archived from this database, so nothing was written: bring it back with `monitor unarchive ID --remote ARCHIVE`, or pull into another database",
            });
        }
        if a.lineage == snap.lineage && snap.serial <= a.serial {
            return Ok(Synced {
                build_id: build_id.to_string(),
                outcome: "archived",
                local_serial: None,
                remote_serial: Some(snap.serial),
                fetched: Some(true),
            });
        }
    }
    let outcome = store.import(&snap, take_remote)?;
    record(store, remote, &snap, fetched.etag)?;
    let (outcome, local) = match outcome {
        Imported::Created { serial } => ("created", serial),
        Imported::FastForward { to, .. } => ("fast_forward", to),
        Imported::UpToDate { serial } => ("up_to_date", serial),
        Imported::LocalAhead { local, .. } => ("local_ahead", local),
        Imported::Replaced { to, .. } => ("replaced", to),
    };
    Ok(Synced {
        build_id: build_id.to_string(),
        outcome,
        local_serial: Some(local),
        remote_serial: Some(snap.serial),
        fetched: Some(true),
    })
}

/// Whether the object listed with `etag` is the copy last synced, so that pulling it
/// would change nothing here (same lineage, no newer serial than this database's).
fn unchanged(m: &crate::store::Marked, etag: &str) -> bool {
    crate::remote::same_etag(etag, &m.mark.etag)
        && m.lineage == m.mark.lineage
        && m.serial >= m.mark.serial
}

/// Pull every build on the remote. A build whose object's listed ETag is the one last
/// synced here, with the same lineage and no newer remote serial than the local one, is
/// not fetched: the object has not changed since, so pulling it would change nothing
/// (on S3, Azure and GCS a run over unchanged builds costs the listing alone).
pub fn pull_all(
    store: &mut Store,
    remote: &Remote,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<(String, Result<Synced>)>> {
    let listed = remote.list_tagged()?;
    let marks = store.remote_marks(remote.name())?;
    let total = listed.len();
    let mut out = Vec::with_capacity(total);
    let mut todo = Vec::new();
    for (id, tag) in listed {
        let unchanged = tag
            .as_deref()
            .and_then(|tag| marks.get(&id).filter(|m| unchanged(m, tag)));
        let Some(m) = unchanged else {
            todo.push(id);
            continue;
        };
        let outcome = if m.archived {
            "archived"
        } else if m.serial == m.mark.serial {
            "up_to_date"
        } else {
            "local_ahead"
        };
        out.push((
            id.clone(),
            Ok(Synced {
                build_id: id,
                outcome,
                // An archived build is not in this database, fetched or not.
                local_serial: (!m.archived).then_some(m.serial),
                remote_serial: Some(m.mark.serial),
                fetched: Some(false),
            }),
        ));
        progress(out.len(), total);
    }
    let fetched = remote.get_many(&todo, PARALLEL);
    for (id, f) in todo.into_iter().zip(fetched) {
        let r = match f {
            Ok(Some(f)) => import_fetched(store, remote, &id, f, false),
            Ok(None) => Err(Error::NotOnRemote {
                build_id: id.clone(),
                remote: remote.name().to_string(),
            }),
            Err(e) => Err(e),
        };
        out.push((id, r));
        progress(out.len(), total);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One build's place on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    pub build_id: String,
    pub local_serial: Option<u64>,
    pub remote_serial: Option<u64>,
    /// in_sync, local_ahead, remote_ahead, diverged, local_only, remote_only, unreadable
    pub state: &'static str,
}

/// Local vs remote serial of every build on either side.
pub fn status(store: &Store, remote: &Remote) -> Result<Vec<StatusRow>> {
    let local: std::collections::BTreeMap<String, u64> =
        store.build_serials()?.into_iter().collect();
    let mut ids: Vec<String> = remote.list()?;
    let on_remote: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    ids.extend(local.keys().filter(|k| !on_remote.contains(*k)).cloned());
    ids.sort();
    let fetched = remote.get_many(&ids, PARALLEL);
    let mut rows = Vec::new();
    for (id, f) in ids.into_iter().zip(fetched) {
        let local_serial = local.get(&id).copied();
        let (remote_serial, state) = match f? {
            None => (None, "local_only"),
            Some(f) => match remote.decode(&f.bytes) {
                Err(_) => (None, "unreadable"),
                Ok(snap) => {
                    let state = match local_serial {
                        None => "remote_only",
                        Some(_) => {
                            let mine = store.snapshot(&id)?;
                            let histories = crate::snapshot::compare(&mine.events, &snap.events);
                            if mine.lineage != snap.lineage || !histories.agree() {
                                "diverged"
                            } else if mine.serial == snap.serial {
                                "in_sync"
                            } else if mine.serial > snap.serial {
                                "local_ahead"
                            } else {
                                "remote_ahead"
                            }
                        }
                    };
                    (Some(snap.serial), state)
                }
            },
        };
        rows.push(StatusRow {
            build_id: id,
            local_serial,
            remote_serial,
            state,
        });
    }
    Ok(rows)
}

/// How many lost races a remote-mode write absorbs (pull, re-apply, push) before it
/// reports exit 15.
pub const RACE_TRIES: u32 = 12;

/// A store, and in remote mode the remote its writes go through.
///
/// Remote mode (`BUILDSTATE_REMOTE` / `--remote`): every write pulls the build, applies
/// the transition in a local transaction, and pushes the result with If-Match before
/// that transaction commits. A lost race rolls the local write back and starts again
/// from the pull, for as long as the transition is still valid: so two machines can
/// never both start the same state, and the local database is only a cache of the
/// remote. Without a remote, writes are local.
pub struct Writer {
    pub(super) store: Store,
    remote: Option<Remote>,
    /// This machine's clock against the remote's, in ms, once measured.
    clock_offset: Option<i64>,
}

/// This machine's clock corrected by its offset from the remote's (ms it runs ahead; 0
/// in local mode or with the skew check off).
#[derive(Clone, Copy)]
struct Clock(i64);

impl Clock {
    fn now(self) -> std::time::SystemTime {
        let now = std::time::SystemTime::now();
        let off = std::time::Duration::from_millis(self.0.unsigned_abs());
        if self.0 > 0 {
            now - off
        } else {
            now + off
        }
    }
}

impl Writer {
    /// The local database, to read (in remote mode a cache the writes keep current) and
    /// for this machine's own bookkeeping (the journal, caches). The shared record is
    /// written only through the Writer's methods, which go through the remote.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn new(store: Store, remote: Option<Remote>) -> Writer {
        Writer {
            store,
            remote,
            clock_offset: None,
        }
    }

    /// The time to decide and write by. Local mode: this machine's clock. Remote mode:
    /// this machine's clock measured against the remote's once per process
    /// ([`Remote::clock_offset`]) and corrected by the offset; an offset larger than
    /// `BUILDSTATE_MAX_CLOCK_SKEW` is [`Error::ClockSkew`]: a worker whose clock runs
    /// ahead would take over live leases, one behind would skip backoffs, so it neither
    /// writes nor decides.
    pub fn now(&mut self) -> Result<std::time::SystemTime> {
        Ok(self.clock()?.now())
    }

    /// The clock this writer's writes are stamped by (see [`Writer::now`]): measured and
    /// checked once, then read at each write, so that a write made after a two-hour
    /// command is stamped when it is made.
    fn clock(&mut self) -> Result<Clock> {
        let Some(remote) = &self.remote else {
            return Ok(Clock(0));
        };
        let Some(bound) = remote.max_clock_skew() else {
            return Ok(Clock(0));
        };
        let offset = match self.clock_offset {
            Some(o) => o,
            None => {
                let o = remote.clock_offset()?;
                self.clock_offset = Some(o);
                o
            }
        };
        let off = std::time::Duration::from_millis(offset.unsigned_abs());
        if off > bound {
            return Err(Error::ClockSkew(format!(
                "this machine's clock is {} {} remote {}'s, more than BUILDSTATE_MAX_CLOCK_SKEW ({}): leases and retry times decided here would be wrong for every other machine, so nothing was written. Fix the clock (NTP: `timedatectl status`, `chronyc tracking`)",
                crate::time::format_duration(off),
                if offset > 0 { "ahead of" } else { "behind" },
                remote.name(),
                crate::time::format_duration(bound),
            )));
        }
        Ok(Clock(offset))
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The store and the remote back (a command that goes on without the Writer).
    pub fn into_parts(self) -> (Store, Option<Remote>) {
        (self.store, self.remote)
    }

    /// Whether this machine's clock was measured against the remote's.
    pub(super) fn clock_offset_known(&self) -> Option<i64> {
        self.clock_offset
    }

    /// A change to the build's shared record that is not a transition (an alert's claim
    /// or delivery): `f` runs in a local write transaction and says whether it changed
    /// anything; if so, the build is pushed (same serial, compare-and-swap) before that
    /// transaction commits. A lost race pulls and runs `f` again. Remote mode only.
    pub fn update_shared<T>(
        &mut self,
        build_id: &str,
        mut f: impl FnMut(&rusqlite::Connection) -> Result<(T, bool)>,
    ) -> Result<T> {
        self.through_remote(build_id, |store, remote| {
            store.in_write_tx(|conn| {
                let (v, changed) = f(conn)?;
                if changed {
                    let b = crate::store::build_in(conn, build_id)?
                        .ok_or_else(|| Error::UnknownBuild(build_id.to_string()))?;
                    push_in(conn, remote, &b, Appended::No)?;
                }
                Ok(v)
            })
        })
    }

    /// Pull `build_id`, then run `write` (which pushes with compare-and-swap); after a
    /// lost race, pull and run it again, up to [`RACE_TRIES`] times. Remote mode only.
    fn through_remote<T>(
        &mut self,
        build_id: &str,
        mut write: impl FnMut(&mut Store, &Remote) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..RACE_TRIES {
            self.refresh(build_id)?;
            let Writer { store, remote, .. } = self;
            let remote = remote.as_ref().ok_or_else(|| {
                Error::InvalidInput("this works in remote mode only (set --remote)".into())
            })?;
            match write(store, remote) {
                Err(Error::RemoteChanged(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(
                        10 + (crate::model::random_unit() * 90.0) as u64,
                    ))
                }
                other => return other,
            }
        }
        Err(Error::RemoteChanged(format!(
            "build '{build_id}': lost the race {RACE_TRIES} times in a row; try again"
        )))
    }

    /// Pull every build on the remote into the local copy (remote mode); the results per
    /// build, as [`pull_all`].
    pub fn pull_all(
        &mut self,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<(String, Result<Synced>)>> {
        match &self.remote {
            None => Ok(Vec::new()),
            Some(remote) => pull_all(&mut self.store, remote, progress),
        }
    }

    /// The remote writes go through, in remote mode.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// A heartbeat: extend `owner`'s lease on `attempt` to `ttl` from now. In remote mode
    /// the lease is extended on the remote (compare-and-swap, no new serial) after
    /// pulling what others wrote, so every machine sees it for as long as the worker
    /// lives. `false`: the lease is no longer this worker's (taken over, cancelled, the
    /// state moved on); it must stop.
    pub fn renew_lease(
        &mut self,
        build_id: &str,
        owner: &str,
        attempt: u32,
        ttl: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<bool> {
        if self.remote.is_none() {
            let until = std::time::SystemTime::now() + ttl;
            return self
                .store
                .renew_lease(build_id, owner, attempt, until, wait);
        }
        let until = self.now()? + ttl;
        self.through_remote(build_id, |store, remote| {
            store.renew_lease_with(build_id, owner, attempt, until, wait, |conn, b| {
                push_in(conn, remote, b, Appended::No)
            })
        })
    }

    /// Remote mode: bring the local copy of `build_id` up to date with the remote's
    /// (a divergent local copy is an error, exit 16). Local mode: nothing to do.
    pub fn refresh(&mut self, build_id: &str) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        crate::model::validate_build_id(build_id)?;
        // When this copy is exactly the one last seen there (same lineage and serial),
        // a conditional read suffices: an unchanged remote copy sends nothing back.
        let mark = self.store.remote_mark(remote.name(), build_id)?;
        let here = self.store.build(build_id)?;
        let fetched = match (&mark, &here) {
            (Some(m), Some(b)) if m.serial == b.serial && m.lineage == b.lineage => {
                match remote.get_if_changed(build_id, &m.etag)? {
                    None => return Ok(()),
                    Some(f) => f,
                }
            }
            _ => remote.get(build_id)?,
        };
        match fetched {
            Some(f) => {
                import_fetched(&mut self.store, remote, build_id, f, false)?;
            }
            // We wrote or read it there before, and now it is gone: say so, rather than
            // losing every conditional write to an object that no longer exists.
            None if self.store.archived(build_id)?.is_some() => {}
            None => {
                if let Some(m) = self.store.remote_mark(remote.name(), build_id)? {
                    return Err(Error::RemoteChanged(format!(
                        "build '{build_id}': its copy on remote {} is gone (this database last saw it there at serial {}; someone deleted it, or the remote was emptied); nothing was written. To re-create it from this database: `sync-cloud push {build_id} --force`; to drop it here too, use another build id",
                        remote.name(),
                        m.serial
                    )));
                }
            }
        }
        Ok(())
    }

    /// One transition: local, or through the remote (see the type's documentation). In
    /// remote mode, an outcome (complete, fail, interrupt) that the remote does not take
    /// is journaled and tried again while the lease lasts (`crate::share::journal`).
    pub fn transition(
        &mut self,
        build_id: &str,
        t: &crate::model::Transition,
        actor: &crate::context::Actor,
        ctx: &crate::model::Ctx<'_>,
    ) -> Result<crate::model::Build> {
        if self.remote.is_none() {
            // Every write is stamped when it is made, inside its transaction, whatever
            // time the caller's context was built at: a complete after a two-hour
            // command says so, its backoff counts from the failure, a start's lease
            // from the start.
            let now = ctx.happened;
            return self.store.transition_stamped(
                build_id,
                t,
                actor,
                ctx,
                || now.unwrap_or_else(std::time::SystemTime::now),
                |_, _| Ok(()),
            );
        }
        // When it was asked: an outcome that must wait for the remote is recorded as of
        // then (the time its command ended), not the time it finally lands.
        let asked = self.now_offline();
        match self.transition_remote(build_id, t, actor, ctx) {
            Err(Error::Remote(e)) => {
                let ctx = crate::model::Ctx {
                    happened: ctx.happened.or(Some(asked)),
                    ..*ctx
                };
                self.hold_outcome(build_id, t, actor, &ctx, e)
            }
            other => other,
        }
    }

    /// [`Writer::transition`] through the remote, once (with its lost-race retries).
    pub(super) fn transition_remote(
        &mut self,
        build_id: &str,
        t: &crate::model::Transition,
        actor: &crate::context::Actor,
        ctx: &crate::model::Ctx<'_>,
    ) -> Result<crate::model::Build> {
        let clock = self.clock()?;
        let happened = ctx.happened;
        let stamp = || happened.unwrap_or_else(|| clock.now());
        let mut pause = std::time::Duration::from_millis(20);
        for _ in 0..RACE_TRIES {
            self.refresh(build_id)?;
            let Writer { store, remote, .. } = self;
            let remote = remote.as_ref().expect("remote mode");
            // What the remote accepted, if it did: from then on the write has happened,
            // whatever becomes of the local commit.
            let pushed = std::cell::RefCell::new(None);
            let written = store.transition_stamped(build_id, t, actor, ctx, stamp, |conn, b| {
                push_in(conn, remote, b, Appended::Events)?;
                pushed.replace(Some(b.clone()));
                Ok(())
            });
            let written = match (written, pushed.into_inner()) {
                (Err(e), Some(b)) => {
                    // The remote is the truth in remote mode; this database is a cache
                    // that the next command's pull brings up to date.
                    eprintln!(
                        "buildstate: warning: build '{build_id}': the write is recorded on remote {} (serial {}), but this machine's copy could not be updated: {e}. The next command pulls it.",
                        remote.name(),
                        b.serial
                    );
                    Ok(b)
                }
                (written, _) => written,
            };
            match written {
                Err(Error::RemoteChanged(_)) => {
                    // Another worker wrote first: back off a little, spread out, and
                    // try again on top of what it wrote.
                    let jitter = crate::model::random_unit();
                    std::thread::sleep(pause.mul_f64(0.5 + jitter));
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                other => return other,
            }
        }
        Err(Error::RemoteChanged(format!(
            "build '{build_id}': lost the race to other workers {RACE_TRIES} times in a row on remote {}; nothing was written: try again",
            self.remote.as_ref().expect("remote mode").name()
        )))
    }

    /// init-state: create the build (or confirm an identical one), here and, in remote
    /// mode, on the remote (create-only; another database's build with the same id is
    /// pulled and compared instead).
    pub fn init(
        &mut self,
        req: &crate::model::InitRequest,
        actor: &crate::context::Actor,
        now: std::time::SystemTime,
    ) -> Result<crate::store::InitOutcome> {
        let now = if self.remote.is_some() {
            self.now()?
        } else {
            now
        };
        for _ in 0..RACE_TRIES {
            self.refresh(&req.build_id)?;
            let outcome = self.store.init(req, actor, now)?;
            let Some(remote) = &self.remote else {
                return Ok(outcome);
            };
            let mark = self.store.remote_mark(remote.name(), &req.build_id)?;
            if mark
                .as_ref()
                .is_some_and(|m| m.serial >= outcome.build.serial)
            {
                return Ok(outcome);
            }
            match push(&mut self.store, remote, &req.build_id, false) {
                Ok(_) => return Ok(outcome),
                // Another machine created it at the same moment. Ours was created by this
                // very call and holds nothing else: if theirs has the identity asked for,
                // adopt it (init is idempotent across machines); else it is a conflict.
                Err(Error::RemoteChanged(_)) if outcome.created => {
                    let Some(f) = remote.get(&req.build_id)? else {
                        continue;
                    };
                    let theirs = remote.decode(&f.bytes)?;
                    let b = &theirs.build;
                    if b.cloud != req.cloud
                        || b.image != req.image
                        || b.plan_hash != req.plan.hash()
                    {
                        return Err(Error::Conflict {
                            build_id: req.build_id.clone(),
                            field: "identity on the remote".into(),
                            existing: format!(
                                "cloud '{}', image '{}', plan {}",
                                b.cloud,
                                b.image,
                                &b.plan_hash[..12]
                            ),
                            requested: format!(
                                "cloud '{}', image '{}', plan {}",
                                req.cloud,
                                req.image,
                                &req.plan.hash()[..12]
                            ),
                            hint: "; another machine created it at the same time",
                        });
                    }
                    self.store.import(&theirs, true)?;
                    record(&mut self.store, remote, &theirs, f.etag)?;
                    // The next round confirms the metadata against theirs, as a local
                    // repeated init would.
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::RemoteChanged(format!(
            "build '{}': lost the race {RACE_TRIES} times in a row; try again",
            req.build_id
        )))
    }
}

/// Inside a write's transaction: push the build as it now stands, If-Match on the ETag
/// last seen (create-only if none), and remember the new ETag in the same transaction.
fn push_in(
    conn: &rusqlite::Connection,
    remote: &Remote,
    b: &crate::model::Build,
    appended: Appended,
) -> Result<()> {
    // Alerts raised in remote mode travel with the build: whichever machine delivers
    // them claims them through the remote (see crate::notify::RemoteOutbox).
    crate::store::outbox::share_pending(conn, &b.build_id)?;
    let snap = crate::store::snapshot_in(conn, &b.build_id)?;
    let expected = crate::store::remote_mark_in(conn, remote.name(), &b.build_id)?.map(|m| m.etag);
    // A lost answer must not become a lost (or doubled) write: if the object holds this
    // write (its events carry this write's id), it landed, whatever the answer said.
    let etag = match remote.put(&b.build_id, remote.encode(&snap), expected.as_deref()) {
        Ok(etag) => etag,
        Err(e) => match landed_anyway(remote, &snap, appended, e)? {
            Some(etag) => etag,
            // Landed, and someone wrote on top since: commit ours; the next pull
            // fast-forwards and remembers the newer ETag.
            None => return Ok(()),
        },
    };
    crate::store::set_remote_mark_in(
        conn,
        remote.name(),
        &b.build_id,
        &RemoteMark {
            etag,
            serial: b.serial,
            lineage: b.lineage.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    //! The Writer's races against an in-memory remote: no process, no server.
    use std::sync::Arc;

    use super::*;
    use crate::context::Actor;
    use crate::model::{Ctx, InitRequest, Transition};
    use crate::share::objects::Memory;

    const KEY: &str = "builds/b.json";

    fn worker(dir: &std::path::Path, name: &str, mem: &Arc<Memory>) -> Writer {
        let store = Store::open(&dir.join(format!("{name}.db"))).unwrap();
        Writer::new(store, Some(Remote::in_memory(Arc::clone(mem))))
    }

    /// Build `b` on an in-memory remote, created by worker `a`.
    fn one_build() -> (tempfile::TempDir, Arc<Memory>, Actor, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let mem = Memory::new();
        let actor = Actor::from_lookup("test", "test-host", 0, |_| None);
        let mut a = worker(dir.path(), "a", &mem);
        a.init(
            &InitRequest::sample("b"),
            &actor,
            std::time::SystemTime::now(),
        )
        .unwrap();
        (dir, mem, actor, a)
    }

    fn meta(k: &str) -> Transition {
        Transition::Meta {
            pairs: vec![(k.to_string(), "v".to_string())],
        }
    }

    fn remote_copy(mem: &Memory) -> Snapshot {
        Snapshot::from_signed_json(&mem.object(KEY).unwrap(), None).unwrap()
    }

    fn metas(s: &Snapshot) -> usize {
        s.events
            .iter()
            .filter(|e| e.kind == crate::model::EventKind::Meta)
            .count()
    }

    /// Another worker writes between this one's pull and its put: the compare-and-swap
    /// loses, nothing is overwritten, and the write is tried again on the newer copy.
    #[test]
    fn a_lost_race_is_retried_on_the_newer_copy_and_overwrites_nothing() {
        let (dir, mem, actor, mut a) = one_build();
        let first = mem.object(KEY).unwrap();
        a.transition("b", &meta("from_a"), &actor, &Ctx::live())
            .unwrap();
        let second = mem.object(KEY).unwrap();
        // B finds the first copy, and A's write lands just before B's put.
        mem.set(KEY, first);
        mem.overtake(KEY, second);
        let mut b = worker(dir.path(), "b", &mem);
        let built = b
            .transition("b", &meta("from_b"), &actor, &Ctx::live())
            .unwrap();
        let theirs = remote_copy(&mem);
        assert_eq!(metas(&theirs), 2, "both writes are on the remote");
        assert_eq!(theirs.build.serial, built.serial);
        assert_eq!(b.store().build("b").unwrap().unwrap().serial, built.serial);
    }

    /// The put lands but its answer is lost: the write is recorded once, here and on
    /// the remote, and the next write goes on from the ETag that landed.
    #[test]
    fn a_write_that_landed_without_an_answer_is_recorded_once() {
        let (_dir, mem, actor, mut a) = one_build();
        mem.lose_answers(1);
        let built = a
            .transition("b", &meta("once"), &actor, &Ctx::live())
            .unwrap();
        let theirs = remote_copy(&mem);
        assert_eq!(metas(&theirs), 1);
        assert_eq!(theirs.build.serial, built.serial);
        assert_eq!(
            metas(&Snapshot::from_signed_json(&mem.object(KEY).unwrap(), None).unwrap()),
            1
        );
        // The ETag that landed was remembered: the next write needs no retry.
        a.transition("b", &meta("next"), &actor, &Ctx::live())
            .unwrap();
        assert_eq!(metas(&remote_copy(&mem)), 2);
        assert_eq!(
            a.store()
                .events("b")
                .unwrap()
                .iter()
                .filter(|e| e.kind == crate::model::EventKind::Meta)
                .count(),
            2
        );
    }
}
