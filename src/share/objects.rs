//! What a remote is made of: four operations on objects addressed by '/'-separated
//! keys relative to its root (get, conditional put, create-only put, list) and the
//! remote's clock, behind one trait with three implementations: an object store
//! (S3, Azure Blob, GCS through object_store), a folder of our own with compare-and-swap
//! under `flock` (`file://`), and an in-memory one for unit tests of what is built on
//! top ([`crate::remote::Remote`], the Writer's races), with faults on demand.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// An object as read: its bytes and the ETag a conditional write compares (`None` when
/// the server gave none).
pub type Object = (Vec<u8>, Option<String>);

/// A conditional write of a batch: the key, the bytes, the ETag expected (`None`:
/// create-only).
pub type Put = (String, Vec<u8>, Option<String>);

/// Called after each write of a batch.
pub type Progress<'a> = &'a (dyn Fn() + Sync);

/// The operations every use of a remote is made of.
pub trait Objects: Send + Sync {
    /// The object at `key`, if there is one; `what` says what for, in errors.
    fn get(&self, key: &str, what: &str) -> Result<Option<Object>>;
    /// The object at `key` only if its ETag is no longer `etag` (a conditional read:
    /// `If-None-Match`, no body sent back when unchanged): `None` when it is unchanged,
    /// else what [`Objects::get`] gives. Where a remote has no such read, a whole read
    /// compared here.
    fn get_if_changed(&self, key: &str, etag: &str, what: &str) -> Result<Option<Option<Object>>> {
        let o = self.get(key, what)?;
        let same = o
            .as_ref()
            .and_then(|(_, e)| e.as_deref())
            .is_some_and(|e| same_etag(e, etag));
        Ok((!same).then_some(o))
    }
    /// Write `bytes` at `key`: create-only when `expected` is `None`, else only while the
    /// object's ETag is still `expected`. The new ETag; a lost race is
    /// [`Error::RemoteChanged`], and nothing is overwritten.
    fn put(&self, key: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<String>;
    /// Write `bytes` at `key` only if nothing is there: `false` when something is.
    fn put_new(&self, key: &str, bytes: Vec<u8>, what: &str) -> Result<bool>;
    /// The names of the objects directly under the folder `dir`, each with the ETag the
    /// listing gives (`None` where it gives none).
    fn list(&self, dir: &str, what: &str) -> Result<Vec<(String, Option<String>)>>;
    /// The remote's time now, in milliseconds since the epoch.
    fn now_ms(&self) -> Result<i64>;
    /// Where `key` is, for messages.
    fn locate(&self, key: &str) -> String;
    /// Many reads, in input order, at most `parallel` at once where the remote can.
    fn get_many(&self, keys: &[String], _parallel: usize) -> Vec<Result<Option<Object>>> {
        keys.iter()
            .map(|k| self.get(k, &format!("read {}", self.locate(k))))
            .collect()
    }
    /// Many conditional writes, in input order; `progress` after each.
    fn put_many(
        &self,
        items: Vec<Put>,
        _parallel: usize,
        progress: Progress,
    ) -> Vec<Result<String>> {
        items
            .into_iter()
            .map(|(key, bytes, etag)| {
                let r = self.put(&key, bytes, etag.as_deref());
                progress();
                r
            })
            .collect()
    }
}

/// `BUILDSTATE_LOG=debug`: one line per request to a remote (target `buildstate::remote`):
/// the method, the key, how it went (found, not found, written, a lost race, an error,
/// already redacted) and how long it took. object_store's own retries are its
/// `object_store` events (README, BUILDSTATE_LOG).
fn log_request<T>(
    remote: &str,
    method: &str,
    key: &dyn std::fmt::Display,
    started: std::time::Instant,
    r: &Result<T>,
    outcome: impl FnOnce(&T) -> String,
) {
    if tracing::enabled!(target: "buildstate::remote", tracing::Level::DEBUG) {
        let how = match r {
            Ok(v) => outcome(v),
            Err(Error::RemoteChanged(_)) => "precondition failed (another writer was first)".into(),
            Err(e) => format!("failed: {e}"),
        };
        tracing::debug!(
            target: "buildstate::remote",
            "{method} {key} at {remote}: {how}, {} ms",
            started.elapsed().as_millis()
        );
    }
}

/// [`log_request`] around a request made by `run`.
fn timed<T>(
    remote: &str,
    method: &str,
    key: &dyn std::fmt::Display,
    run: impl FnOnce() -> Result<T>,
    outcome: impl FnOnce(&T) -> String,
) -> Result<T> {
    let started = std::time::Instant::now();
    let r = run();
    log_request(remote, method, key, started, &r, outcome);
    r
}

fn found(o: &Option<Object>) -> String {
    match o {
        Some((bytes, etag)) => format!(
            "found, {} bytes, ETag {}",
            bytes.len(),
            etag.as_deref().unwrap_or("none")
        ),
        None => "not found".into(),
    }
}

pub(crate) fn remote_error(name: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Remote(format!(
        "remote {name}: could not {what}: {}",
        crate::redact::redact(&e.to_string())
    ))
}

fn millis(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Whether two ETags name the same object version. Servers quote them in headers and
/// not always in listings (Azure), so quotes do not count.
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

// --- object stores (S3, Azure Blob, GCS) ----------------------------------------------

/// An object store under a prefix, driven from a runtime of its own.
pub struct Cloud {
    pub(crate) name: String,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: ObjPath,
    /// Where to ask for the store's time (an HTTP `Date` header).
    pub(crate) clock_url: String,
    pub(crate) request_timeout: Duration,
    pub(crate) rt: tokio::runtime::Runtime,
}

impl Cloud {
    fn path(&self, key: &str) -> ObjPath {
        key.split('/')
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }
}

impl Objects for Cloud {
    fn get(&self, key: &str, what: &str) -> Result<Option<Object>> {
        self.rt
            .block_on(object_get(&self.name, &self.store, &self.path(key), what))
    }

    fn get_if_changed(&self, key: &str, etag: &str, what: &str) -> Result<Option<Option<Object>>> {
        let path = self.path(key);
        let changed = self.rt.block_on(object_get_if_changed(
            &self.name,
            &self.store,
            &path,
            etag,
            what,
        ))?;
        match changed {
            Changed::No => Ok(None),
            Changed::Yes(o) => Ok(Some(o)),
            // A server that answers the condition otherwise than HTTP says: read it whole.
            Changed::Unknown => self.get(key, what).map(Some),
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<String> {
        self.rt.block_on(object_put(
            &self.name,
            &self.store,
            &self.path(key),
            bytes,
            expected,
        ))
    }

    fn put_new(&self, key: &str, bytes: Vec<u8>, what: &str) -> Result<bool> {
        let path = self.path(key);
        timed(
            &self.name,
            "PUT (if none match)",
            &path,
            || {
                self.rt.block_on(async {
                    let opts = PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    };
                    match self.store.put_opts(&path, bytes.into(), opts).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                        Err(e) => Err(remote_error(&self.name, what, e)),
                    }
                })
            },
            |new| {
                if *new {
                    "written".into()
                } else {
                    "exists already".into()
                }
            },
        )
    }

    fn list(&self, dir: &str, what: &str) -> Result<Vec<(String, Option<String>)>> {
        let dir = self.path(dir);
        timed(
            &self.name,
            "LIST",
            &dir,
            || {
                self.rt.block_on(async {
                    let mut out = Vec::new();
                    let mut stream = self.store.list(Some(&dir));
                    while let Some(meta) = stream.next().await {
                        let meta = meta.map_err(|e| remote_error(&self.name, what, e))?;
                        if let Some(name) = meta.location.filename() {
                            out.push((name.to_string(), meta.e_tag.clone()));
                        }
                    }
                    Ok(out)
                })
            },
            |names| format!("{} object(s)", names.len()),
        )
    }

    /// The `Date` header of the store's answer to one request (1 s resolution, so the
    /// middle of that second).
    fn now_ms(&self) -> Result<i64> {
        let started = std::time::Instant::now();
        let date = self.rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(self.request_timeout)
                .build()
                .map_err(|e| remote_error(&self.name, "ask for its time", e.without_url()))?;
            let r = client
                .head(&self.clock_url)
                .send()
                .await
                .map_err(|e| remote_error(&self.name, "ask for its time", e.without_url()))?;
            Ok::<_, Error>(
                r.headers()
                    .get(reqwest::header::DATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            )
        });
        log_request(&self.name, "HEAD", &"/ (its clock)", started, &date, |d| {
            format!("Date {}", d.as_deref().unwrap_or("missing"))
        });
        let date = date?;
        let Some(date) = date else {
            return Err(Error::Remote(format!(
                "remote {}: its server gave no Date header, so this machine's clock cannot be checked against it; set BUILDSTATE_MAX_CLOCK_SKEW=off to write without the check",
                self.name
            )));
        };
        let t = chrono::DateTime::parse_from_rfc2822(&date).map_err(|e| {
            remote_error(&self.name, &format!("read its time from Date: {date:?}"), e)
        })?;
        Ok(t.timestamp_millis() + 500)
    }

    fn locate(&self, key: &str) -> String {
        self.path(key).to_string()
    }

    fn get_many(&self, keys: &[String], parallel: usize) -> Vec<Result<Option<Object>>> {
        self.rt.block_on(async {
            futures::stream::iter(keys.iter().map(|k| {
                let store = Arc::clone(&self.store);
                let key = self.path(k);
                let name = self.name.clone();
                async move {
                    let what = format!("read {key}");
                    object_get(&name, &store, &key, &what).await
                }
            }))
            .buffered(parallel.max(1))
            .collect()
            .await
        })
    }

    fn put_many(
        &self,
        items: Vec<Put>,
        parallel: usize,
        progress: Progress,
    ) -> Vec<Result<String>> {
        self.rt.block_on(async {
            futures::stream::iter(items.into_iter().map(|(k, bytes, etag)| {
                let store = Arc::clone(&self.store);
                let key = self.path(&k);
                let name = self.name.clone();
                async move {
                    let r = object_put(&name, &store, &key, bytes, etag.as_deref()).await;
                    progress();
                    r
                }
            }))
            .buffered(parallel.max(1))
            .collect()
            .await
        })
    }
}

async fn object_get(
    name: &str,
    store: &Arc<dyn ObjectStore>,
    key: &ObjPath,
    what: &str,
) -> Result<Option<Object>> {
    let started = std::time::Instant::now();
    let r = match store.get(key).await {
        Ok(r) => {
            let etag = r.meta.e_tag.clone();
            match r.bytes().await {
                Ok(bytes) => Ok(Some((bytes.to_vec(), etag))),
                Err(e) => Err(remote_error(name, what, e)),
            }
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(remote_error(name, what, e)),
    };
    log_request(name, "GET", key, started, &r, found);
    r
}

/// What a conditional read found.
enum Changed {
    /// The object's ETag is still the one given.
    No,
    /// Another ETag (the object), or no object.
    Yes(Option<Object>),
    /// The server refused the condition itself (a 412 on a read): not known.
    Unknown,
}

async fn object_get_if_changed(
    name: &str,
    store: &Arc<dyn ObjectStore>,
    key: &ObjPath,
    etag: &str,
    what: &str,
) -> Result<Changed> {
    let started = std::time::Instant::now();
    let opts = object_store::GetOptions {
        if_none_match: Some(etag.to_string()),
        ..Default::default()
    };
    let r = match store.get_opts(key, opts).await {
        Ok(r) => {
            let etag = r.meta.e_tag.clone();
            match r.bytes().await {
                Ok(bytes) => Ok(Changed::Yes(Some((bytes.to_vec(), etag)))),
                Err(e) => Err(remote_error(name, what, e)),
            }
        }
        Err(object_store::Error::NotModified { .. }) => Ok(Changed::No),
        Err(object_store::Error::NotFound { .. }) => Ok(Changed::Yes(None)),
        Err(object_store::Error::Precondition { .. }) => Ok(Changed::Unknown),
        Err(e) => Err(remote_error(name, what, e)),
    };
    log_request(name, "GET (if none match)", key, started, &r, |c| match c {
        Changed::No => "not modified".into(),
        Changed::Yes(o) => found(o),
        Changed::Unknown => "the condition was refused: read again whole".into(),
    });
    r
}

async fn object_put(
    name: &str,
    store: &Arc<dyn ObjectStore>,
    key: &ObjPath,
    bytes: Vec<u8>,
    expected: Option<&str>,
) -> Result<String> {
    let mode = match expected {
        None => PutMode::Create,
        Some(e) => PutMode::Update(UpdateVersion {
            e_tag: Some(e.to_string()),
            version: None,
        }),
    };
    let opts = PutOptions {
        mode,
        ..Default::default()
    };
    let method = if expected.is_some() {
        "PUT (if match)"
    } else {
        "PUT (if none match)"
    };
    let started = std::time::Instant::now();
    let r = object_put_once(name, store, key, bytes, opts).await;
    log_request(name, method, key, started, &r, |etag| {
        format!("written, ETag {etag}")
    });
    r
}

async fn object_put_once(
    name: &str,
    store: &Arc<dyn ObjectStore>,
    key: &ObjPath,
    bytes: Vec<u8>,
    opts: PutOptions,
) -> Result<String> {
    match store.put_opts(key, bytes.into(), opts).await {
        Ok(r) => r.e_tag.ok_or_else(|| {
            Error::Remote(format!(
                "remote {name}: the server gave no ETag for {key}: it cannot do compare-and-swap"
            ))
        }),
        Err(object_store::Error::AlreadyExists { .. }) => Err(lost_race(name, key, true)),
        Err(object_store::Error::Precondition { .. }) => Err(lost_race(name, key, false)),
        Err(e) => Err(remote_error(name, &format!("write {key}"), e)),
    }
}

fn lost_race(name: &str, key: impl std::fmt::Display, existed: bool) -> Error {
    Error::RemoteChanged(if existed {
        format!(
            "remote {name}: {key} exists already, written by another database; nothing was overwritten: pull it first (`sync-cloud pull`), then push"
        )
    } else {
        format!(
            "remote {name}: {key} changed since this database last read or wrote it (another worker wrote first); nothing was overwritten: pull it (`sync-cloud pull`), then push again"
        )
    })
}

// --- file:// remotes: a folder with compare-and-swap under flock --------------------------

/// A folder: each conditional write takes an exclusive `flock` on the folder's lock file,
/// compares the current content's hash (its ETag) and replaces the object by rename.
pub struct Folder {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    /// How long a write waits for another writer's lock (the remote timeout).
    pub(crate) lock_wait: Duration,
}

impl Folder {
    /// One compare-and-swap under the folder's lock.
    fn put_locked(&self, key: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<String> {
        let _lock = FolderLock::take(&self.name, &self.dir, self.lock_wait)?;
        let path = self.dir.join(key);
        let current = folder_get(&self.name, &path)?;
        match (current, expected) {
            (None, None) => {}
            (Some(c), Some(e)) if c.etag == e => {}
            (Some(_), None) => return Err(lost_race(&self.name, path.display(), true)),
            (_, Some(_)) => return Err(lost_race(&self.name, path.display(), false)),
        }
        make_parent(&self.name, &path)?;
        replace_file(&self.name, &path, &bytes)?;
        Ok(content_etag(&bytes))
    }
}

impl Objects for Folder {
    fn get(&self, key: &str, _what: &str) -> Result<Option<Object>> {
        timed(
            &self.name,
            "read",
            &key,
            || Ok(folder_get(&self.name, &self.dir.join(key))?.map(|f| (f.bytes, Some(f.etag)))),
            found,
        )
    }

    fn put(&self, key: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<String> {
        let method = if expected.is_some() {
            "write (if match)"
        } else {
            "write (if none match)"
        };
        timed(
            &self.name,
            method,
            &key,
            || self.put_locked(key, bytes, expected),
            |etag| format!("written, ETag {etag}"),
        )
    }

    fn put_new(&self, key: &str, bytes: Vec<u8>, _what: &str) -> Result<bool> {
        timed(
            &self.name,
            "write (if none match)",
            &key,
            || write_new_file(&self.name, &self.dir.join(key), &bytes),
            |new| {
                if *new {
                    "written".into()
                } else {
                    "exists already".into()
                }
            },
        )
    }

    fn list(&self, dir: &str, what: &str) -> Result<Vec<(String, Option<String>)>> {
        match std::fs::read_dir(self.dir.join(dir)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(remote_error(&self.name, what, e)),
            Ok(entries) => Ok(entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(|n| (n.to_string(), None)))
                .collect()),
        }
    }

    /// The modification time the file system gives a file written there now (a shared
    /// mount's server stamps it).
    fn now_ms(&self) -> Result<i64> {
        let err = |e: std::io::Error| remote_error(&self.name, "read the folder's time", e);
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let probe = tempfile::Builder::new()
            .prefix(".clock-")
            .tempfile_in(&self.dir)
            .map_err(err)?;
        Ok(millis(
            probe
                .as_file()
                .metadata()
                .and_then(|m| m.modified())
                .map_err(err)?,
        ))
    }

    fn locate(&self, key: &str) -> String {
        self.dir.join(key).display().to_string()
    }
}

/// An object read from a folder, with its content hash as ETag.
struct FolderObject {
    bytes: Vec<u8>,
    etag: String,
}

/// A short content hash serves as the ETag of a folder object.
fn content_etag(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!(
        "\"{}\"",
        d.iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn folder_get(name: &str, path: &std::path::Path) -> Result<Option<FolderObject>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(FolderObject {
            etag: content_etag(&bytes),
            bytes,
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(remote_error(name, &format!("read {}", path.display()), e)),
    }
}

/// The folder's lock, held for the duration of one compare-and-swap: the lock lives as
/// long as the open file.
struct FolderLock(#[allow(dead_code)] std::fs::File);

impl FolderLock {
    /// Take the lock, waiting at most `wait` for another writer (a stopped or hung
    /// writer must not block everyone: the remote timeout holds here too).
    fn take(name: &str, dir: &std::path::Path, wait: Duration) -> Result<FolderLock> {
        std::fs::create_dir_all(dir.join("builds"))
            .map_err(|e| remote_error(name, &format!("create {}", dir.display()), e))?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".buildstate.lock"))
            .map_err(|e| remote_error(name, "open the folder's lock file", e))?;
        let deadline = std::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            // SAFETY: flock on a descriptor we own; released when the file is closed.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                tracing::debug!(
                    target: "buildstate::remote",
                    "{name}: the folder's lock taken after {} ms",
                    (wait - deadline.saturating_duration_since(std::time::Instant::now())).as_millis()
                );
                return Ok(FolderLock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(remote_error(name, "lock the folder", e));
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Error::Remote(format!(
                    "remote {name}: could not lock the folder within {} (BUILDSTATE_REMOTE_TIMEOUT): another writer holds {} and does not let go; nothing was written. If no writer is running, look for a stopped process holding it (`fuser {}`)",
                    crate::time::format_duration(wait),
                    dir.join(".buildstate.lock").display(),
                    dir.join(".buildstate.lock").display(),
                )));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Write `path` whole or not at all: a temporary file beside it, fsynced, then moved
/// into place (replacing what is there, or, `create_only`, failing if anything is), and
/// the folder fsynced. The file is created with mode 0666 less the umask, as any other
/// file a user writes into a shared folder.
fn place_file(name: &str, path: &std::path::Path, bytes: &[u8], create_only: bool) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().expect("remote objects live in a folder");
    let err = |e: std::io::Error| remote_error(name, &format!("write {}", path.display()), e);
    if create_only {
        if let Some(placed) = place_unnamed(dir, path, bytes).map_err(err)? {
            return Ok(placed);
        }
    }
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if create_only {
        // link(2) fails if the name exists: create-only even between two machines
        // writing the same name at once. The temporary name goes when `tmp` drops.
        match std::fs::hard_link(tmp.path(), path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(err(e)),
        }
    } else {
        tmp.persist(path).map_err(|e| err(e.error))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(true)
}

/// Create-only, without a temporary name: the file is written unnamed (`O_TMPFILE`) and
/// linked under `path` only when whole, so a writer killed at any moment (`kill -9`
/// during `monitor archive`) leaves nothing behind in the folder. `Ok(None)`: the file
/// system cannot do this (NFS and others); the caller uses a named temporary file.
fn place_unnamed(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<Option<bool>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o666)
        .open(dir)
    {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let mut w = &f;
    w.write_all(bytes)?;
    f.sync_all()?;
    let from = format!("/proc/self/fd/{}\0", std::os::fd::AsRawFd::as_raw_fd(&f));
    let mut to = path.as_os_str().as_bytes().to_vec();
    to.push(0);
    // SAFETY: both paths are NUL-terminated byte strings that outlive the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr().cast(),
            libc::AT_FDCWD,
            to.as_ptr().cast(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked != 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(Some(false)),
            // No /proc (a sandbox): fall back to a named temporary file.
            std::io::ErrorKind::NotFound => Ok(None),
            _ => Err(e),
        };
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Some(true))
}

fn replace_file(name: &str, path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    place_file(name, path, bytes, false).map(|_| ())
}

/// Create `path` (and its folder) with `bytes` if nothing is there: `false` if something
/// is.
fn write_new_file(name: &str, path: &std::path::Path, bytes: &[u8]) -> Result<bool> {
    make_parent(name, path)?;
    place_file(name, path, bytes, true)
}

/// Create the folder an object of the remote goes in.
fn make_parent(name: &str, path: &std::path::Path) -> Result<()> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir)
            .map_err(|e| remote_error(name, &format!("create {}", dir.display()), e)),
        None => Ok(()),
    }
}

// --- in memory, for tests -------------------------------------------------------------

/// A remote in memory: objects with version-numbered ETags, and faults on demand. Shared
/// between Remotes (and Writers) through an `Arc`, as one bucket is between machines.
#[derive(Default)]
pub struct Memory {
    objects: Mutex<std::collections::BTreeMap<String, (Vec<u8>, u64)>>,
    version: std::sync::atomic::AtomicU64,
    faults: Mutex<Faults>,
    /// The remote's clock, ahead of this machine's by this many milliseconds.
    pub clock_ahead_ms: std::sync::atomic::AtomicI64,
}

/// What the next writes meet.
#[derive(Default)]
struct Faults {
    /// Writes that land but whose answer is lost (a timeout after the server wrote).
    lost_answers: u32,
    /// Put in place just before the next write (key, bytes, version): another writer
    /// getting there first.
    before_write: Option<(String, Vec<u8>, u64)>,
}

impl Memory {
    pub fn new() -> Arc<Memory> {
        Arc::new(Memory::default())
    }

    /// The next `n` writes land, and then fail as if their answer was lost.
    pub fn lose_answers(&self, n: u32) {
        self.faults.lock().expect("faults").lost_answers = n;
    }

    /// Before the next write, another writer replaces the object at `key` with `bytes`.
    pub fn overtake(&self, key: &str, bytes: Vec<u8>) {
        let key = key.to_string();
        let version = self.next_version();
        self.faults.lock().expect("faults").before_write = Some((key, bytes, version));
    }

    /// Replace the object at `key` now, as another writer would.
    pub fn set(&self, key: &str, bytes: Vec<u8>) {
        let version = self.next_version();
        self.objects
            .lock()
            .expect("objects")
            .insert(key.to_string(), (bytes, version));
    }

    /// The object at `key` as stored.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.objects
            .lock()
            .expect("objects")
            .get(key)
            .map(|(b, _)| b.clone())
    }

    fn next_version(&self) -> u64 {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    fn etag(version: u64) -> String {
        format!("\"m{version}\"")
    }
}

impl Objects for Memory {
    fn get(&self, key: &str, _what: &str) -> Result<Option<Object>> {
        Ok(self
            .objects
            .lock()
            .expect("objects")
            .get(key)
            .map(|(b, v)| (b.clone(), Some(Memory::etag(*v)))))
    }

    fn put(&self, key: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<String> {
        let (before, lose) = {
            let mut f = self.faults.lock().expect("faults");
            let lose = f.lost_answers > 0;
            f.lost_answers = f.lost_answers.saturating_sub(1);
            (f.before_write.take(), lose)
        };
        let mut objects = self.objects.lock().expect("objects");
        if let Some((k, bytes, version)) = before {
            objects.insert(k, (bytes, version));
        }
        let current = objects.get(key).map(|(_, v)| Memory::etag(*v));
        match (current, expected) {
            (None, None) => {}
            (Some(c), Some(e)) if same_etag(&c, e) => {}
            (Some(_), None) => return Err(lost_race("memory", key, true)),
            (_, Some(_)) => return Err(lost_race("memory", key, false)),
        }
        let version = self.next_version();
        objects.insert(key.to_string(), (bytes, version));
        if lose {
            return Err(Error::Remote(
                "remote memory: could not write: the answer was lost".into(),
            ));
        }
        Ok(Memory::etag(version))
    }

    fn put_new(&self, key: &str, bytes: Vec<u8>, _what: &str) -> Result<bool> {
        let mut objects = self.objects.lock().expect("objects");
        if objects.contains_key(key) {
            return Ok(false);
        }
        let version = self.next_version();
        objects.insert(key.to_string(), (bytes, version));
        Ok(true)
    }

    fn list(&self, dir: &str, _what: &str) -> Result<Vec<(String, Option<String>)>> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        Ok(self
            .objects
            .lock()
            .expect("objects")
            .iter()
            .filter_map(|(k, (_, v))| {
                let name = k.strip_prefix(&prefix)?;
                (!name.contains('/')).then(|| (name.to_string(), Some(Memory::etag(*v))))
            })
            .collect())
    }

    fn now_ms(&self) -> Result<i64> {
        Ok(millis(std::time::SystemTime::now())
            + self
                .clock_ahead_ms
                .load(std::sync::atomic::Ordering::SeqCst))
    }

    fn locate(&self, key: &str) -> String {
        key.to_string()
    }
}
