//! Inputs of states: what a completed state depended on (files, environment variables,
//! metadata, literal values), hashed with SHA-256 when it completes, so that a later
//! change makes it stale and the build reruns from there.
//!
//! A completion records a [`Manifest`]: the SHA-256 of all inputs together (the
//! comparison), plus a short digest per file, variable and key (to *name* what changed).
//! Files are found by globs relative to an inputs root, and their digests are kept in a
//! local cache keyed by path, size, mtime, ctime and inode (as git's index does), so a
//! check of an unchanged tree reads no file. See docs/plan.md#inputs and
//! docs/decisions.md.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::model::{Build, EventKind};
use crate::plan::{InputsDef, Plan};
use crate::{Error, Result};

pub use crate::manifest::{
    changes, check_glob, last_done, Manifest, Mark, Stale, StaleKind, MANIFEST_VERSION,
};
use crate::manifest::{hex, SHORT};

/// Where inputs are read from: the root of the file globs, the environment and the
/// build's metadata.
pub struct Sources<'a> {
    pub root: PathBuf,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub meta: &'a BTreeMap<String, String>,
    /// Salts the digests of variables and metadata (the build's lineage), so a stored
    /// digest of a short secret cannot be looked up in a precomputed table.
    pub salt: &'a str,
    /// Another build's current output, for an `inputs.builds` entry (`BUILD:KEY`, BUILD
    /// perhaps a template): the entry resolved (`base-rhel9:ami_id`) and the value now.
    pub builds: &'a dyn Fn(&str) -> Result<Consumed>,
}

/// An `inputs.builds` entry as found: `BUILD:KEY` resolved, and the build's current
/// value of the output (`None`: it has none).
pub type Consumed = (String, Option<String>);

/// For [`Sources::builds`] where no plan state consumes another build's output.
pub fn no_builds(entry: &str) -> Result<Consumed> {
    Err(Error::Corrupt(format!(
        "no other build's outputs are read here (inputs.builds entry '{entry}')"
    )))
}

/// [`Sources::builds`] from this database: the entry resolved for `child` (with its
/// metadata `meta`), and that build's current output of the key.
pub fn outputs_here<'a>(
    store: &'a crate::store::Store,
    child: &'a Build,
    meta: &'a BTreeMap<String, String>,
) -> impl Fn(&str) -> Result<Consumed> + 'a {
    move |entry| {
        let c = crate::deps::parse_consumed(entry)
            .map_err(|m| Error::Corrupt(format!("inputs.builds: {m}")))?;
        let parent = crate::deps::resolve(&c.build, &crate::deps::Child::of(child, meta))?;
        // An archived parent is judged by the outputs it had when it left.
        let value = match store.outputs(&parent)?.remove(&c.key) {
            Some(o) => Some(o.value),
            None if store.build(&parent)?.is_none() => store
                .archived_outputs(&parent)?
                .and_then(|mut o| o.remove(&c.key)),
            None => None,
        };
        Ok((format!("{parent}:{}", c.key), value))
    }
}

/// The inputs root: `dir`, else `BUILDSTATE_INPUTS_ROOT`, else the working directory.
/// It must be a directory.
pub fn root(dir: Option<&Path>) -> Result<PathBuf> {
    let (root, from) = match dir {
        Some(d) => (d.to_path_buf(), "--inputs-root"),
        None => match std::env::var_os("BUILDSTATE_INPUTS_ROOT").filter(|v| !v.is_empty()) {
            Some(v) => (PathBuf::from(v), "BUILDSTATE_INPUTS_ROOT"),
            None => (
                std::env::current_dir().map_err(|source| Error::Io {
                    path: ".".into(),
                    source,
                })?,
                "the working directory",
            ),
        },
    };
    if !root.is_dir() {
        return Err(Error::InvalidInput(format!(
            "invalid inputs root '{}' ({from}): not a directory; give the checkout the plan's input globs are relative to",
            crate::redact::echo(&root.display().to_string())
        )));
    }
    Ok(root)
}

/// One file's identity as the file system reports it: when all of it is unchanged, the
/// cached digest is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
        }
    }
}

/// A cached digest and when it was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry {
    pub stat: Stat,
    pub digest: [u8; 32],
    /// When the file was hashed (ns since the epoch).
    pub hashed_ns: i64,
}

/// File digests by device and inode, for one inputs root; the store loads and saves it
/// as one record (local only, never synced: inodes belong to this machine). Keyed by
/// inode rather than path, a renamed file keeps its digest and a lookup needs no path.
#[derive(Debug, Default)]
pub struct FileCache {
    pub entries: HashMap<(u64, u64), CacheEntry>,
    /// Whether an entry was added or replaced since loading.
    pub dirty: bool,
}

/// A file changed within this long of being hashed might change again within the same
/// timestamp tick (coarse file systems): such entries are not trusted.
const RACY_NS: i64 = 2_000_000_000;
/// The bytes of one cache entry: six 64-bit numbers and the digest.
const ENTRY_BYTES: usize = 6 * 8 + 32;
/// The most entries kept for one root (the oldest go first).
const MAX_CACHE_ENTRIES: usize = 1_000_000;

impl FileCache {
    fn lookup(&self, stat: &Stat) -> Option<[u8; 32]> {
        let e = self.entries.get(&(stat.dev, stat.ino))?;
        let settled =
            stat.mtime_ns < e.hashed_ns - RACY_NS && stat.ctime_ns < e.hashed_ns - RACY_NS;
        (e.stat == *stat && settled).then_some(e.digest)
    }

    fn insert(&mut self, e: CacheEntry) {
        self.entries.insert((e.stat.dev, e.stat.ino), e);
        self.dirty = true;
    }

    /// This machine's cache for `root`, kept in the database (an empty one if none).
    pub fn load(store: &crate::store::Store, root: &Path) -> Result<FileCache> {
        Ok(store
            .file_cache_bytes(root)?
            .map_or_else(FileCache::default, |b| FileCache::from_bytes(&b)))
    }

    /// Keep the digests computed since `load`, if any (best effort, see
    /// [`crate::store::Store::save_file_cache_bytes`]).
    pub fn save(&mut self, store: &crate::store::Store, root: &Path) {
        if self.dirty {
            self.dirty = false;
            store.save_file_cache_bytes(root, &self.to_bytes());
        }
    }

    /// Read the stored form; anything malformed is dropped (a cache miss, not an error).
    pub fn from_bytes(bytes: &[u8]) -> FileCache {
        let mut entries = HashMap::with_capacity(bytes.len() / ENTRY_BYTES);
        for rec in bytes.chunks_exact(ENTRY_BYTES) {
            let n = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rec[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&rec[48..]);
            let stat = Stat {
                dev: n(0),
                ino: n(1),
                size: n(2),
                mtime_ns: n(3) as i64,
                ctime_ns: n(4) as i64,
            };
            entries.insert(
                (stat.dev, stat.ino),
                CacheEntry {
                    stat,
                    digest,
                    hashed_ns: n(5) as i64,
                },
            );
        }
        FileCache {
            entries,
            dirty: false,
        }
    }

    /// The stored form: fixed-size little-endian records, newest first when cut.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut all: Vec<&CacheEntry> = self.entries.values().collect();
        if all.len() > MAX_CACHE_ENTRIES {
            all.sort_by_key(|e| std::cmp::Reverse(e.hashed_ns));
            all.truncate(MAX_CACHE_ENTRIES);
        }
        let mut out = Vec::with_capacity(all.len() * ENTRY_BYTES);
        for e in all {
            let s = e.stat;
            for n in [
                s.dev,
                s.ino,
                s.size,
                s.mtime_ns as u64,
                s.ctime_ns as u64,
                e.hashed_ns as u64,
            ] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.extend_from_slice(&e.digest);
        }
        out
    }
}

/// The directory a glob's matches all lie under: its leading components without glob
/// characters.
fn glob_base(glob: &str) -> String {
    let parts: Vec<&str> = glob.split('/').collect();
    let mut base = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() || part.contains(['*', '?', '[', '{', '\\']) {
            break;
        }
        base.push(*part);
    }
    base.join("/")
}

/// Files under `root` matching `globs`, sorted by their path relative to the root
/// ('/'-separated), with their stat. Symbolic links to files count as the file they
/// point to; links to directories are not followed.
fn find_files(root: &Path, globs: &[String]) -> Result<Vec<(String, Stat)>> {
    let mut found = Vec::new();
    for glob in globs {
        let matcher = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::InvalidInput(format!("invalid input glob '{glob}': {e}")))?
            .compile_matcher();
        let base = glob_base(glob);
        let dir = root.join(&base);
        // A base that is missing (or not a directory) holds no match.
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            walk(&dir, Path::new(&base), &matcher, &mut found)?;
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.dedup_by(|a, b| a.0 == b.0);
    Ok(found)
}

/// One directory of [`find_files`]: entries are stat'ed relative to the directory, and
/// only files that match. A name that is not UTF-8 is refused only where a glob matches
/// it: one the globs cannot match (a stray file beside the inputs) is none of ours.
fn walk(
    dir: &Path,
    rel: &Path,
    matcher: &globset::GlobMatcher,
    out: &mut Vec<(String, Stat)>,
) -> Result<()> {
    let io = |path: &Path, source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path_rel = rel.join(entry.file_name());
        let ft = entry.file_type().map_err(|e| io(&entry.path(), e))?;
        if ft.is_dir() {
            walk(&entry.path(), &path_rel, matcher, out)?;
            continue;
        }
        if !matcher.is_match(&path_rel) {
            continue;
        }
        let Some(name) = path_rel.to_str() else {
            return Err(Error::InvalidInput(format!(
                "input file '{}' matches an input glob but has a name that is not UTF-8: rename it",
                entry.path().display()
            )));
        };
        let meta = if ft.is_symlink() {
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => m,
                // A link to a directory, a FIFO or a device, or a dangling link: not a
                // file input.
                _ => continue,
            }
        } else if ft.is_file() {
            entry.metadata().map_err(|e| io(&entry.path(), e))?
        } else {
            continue;
        };
        out.push((name.to_string(), Stat::of(&meta)));
    }
    Ok(())
}

/// SHA-256 of a file's content, read in blocks, up to the size the file has when it is
/// opened. Only a regular file is read, opened without blocking (a FIFO put in its place
/// since it was found must not hang the open), and never past that size: a file that
/// grows as it is read, or a kernel file whose read waits for ever (they report size
/// 0), cannot hold hashing up.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (an input is a file's content)",
        ));
    }
    let mut f = f.take(meta.len());
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Hash the files at `paths`, on every core.
fn hash_all(paths: &[PathBuf]) -> Result<Vec<[u8; 32]>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(paths.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out = vec![[0u8; 32]; paths.len()];
    type Done = Result<Vec<(usize, [u8; 32])>>;
    let results: Vec<Done> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = paths.get(i) else {
                            return Ok(mine);
                        };
                        let d = hash_file(path).map_err(|source| Error::Io {
                            path: path.to_path_buf(),
                            source,
                        })?;
                        mine.push((i, d));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::Corrupt("a hashing thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        for (i, d) in r? {
            out[i] = d;
        }
    }
    Ok(out)
}

fn salted(salt: &str, kind: &str, name: &str, value: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    feed(
        &mut h,
        &[
            salt.as_bytes(),
            kind.as_bytes(),
            name.as_bytes(),
            value.as_bytes(),
        ],
    );
    h.finalize().into()
}

/// Add length-prefixed parts to the overall digest.
fn feed(h: &mut Sha256, parts: &[&[u8]]) {
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
}

/// Salted short digests of named values (variables, metadata), fed to `all` in full.
fn named(
    all: &mut Sha256,
    salt: &str,
    kind: &str,
    names: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in names {
        let short = match lookup(name) {
            Some(v) => {
                let d = salted(salt, kind, name, &v);
                feed(all, &[kind.as_bytes(), name.as_bytes(), &d]);
                hex(&d[..SHORT / 2])
            }
            None => {
                feed(all, &[kind.as_bytes(), name.as_bytes(), b"unset"]);
                "unset".to_string()
            }
        };
        out.insert(name.clone(), short);
    }
    out
}

/// How much of a manifest [`compute`] fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Everything, per-file digests included: what a completion records.
    Full,
    /// The overall digest (and the small maps), not the per-file digests: enough to tell
    /// whether anything changed, without 10,000 allocations for a big tree.
    Digest,
}

/// Hash the inputs `def` declares plus `extra_globs` (files a caller discovered).
pub fn compute(
    def: &InputsDef,
    extra_globs: &[String],
    src: &Sources<'_>,
    cache: &mut FileCache,
    detail: Detail,
) -> Result<Manifest> {
    let mut globs: Vec<String> = def.files.clone();
    for g in extra_globs {
        check_glob(g).map_err(|m| Error::InvalidInput(format!("input glob: {m}")))?;
        if !globs.contains(g) {
            globs.push(g.clone());
        }
    }
    let found = find_files(&src.root, &globs)?;
    let mut digests: Vec<[u8; 32]> = Vec::with_capacity(found.len());
    let mut todo: Vec<usize> = Vec::new();
    for (i, (_, stat)) in found.iter().enumerate() {
        match cache.lookup(stat) {
            Some(d) => digests.push(d),
            None => {
                digests.push([0; 32]);
                todo.push(i);
            }
        }
    }
    if !todo.is_empty() {
        let paths: Vec<PathBuf> = todo.iter().map(|&i| src.root.join(&found[i].0)).collect();
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        for (&i, d) in todo.iter().zip(hash_all(&paths)?) {
            digests[i] = d;
            cache.insert(CacheEntry {
                stat: found[i].1,
                digest: d,
                hashed_ns: now_ns,
            });
        }
    }

    let mut all = Sha256::new();
    let mut m = Manifest {
        v: MANIFEST_VERSION,
        digest: String::new(),
        globs,
        files: BTreeMap::new(),
        env: BTreeMap::new(),
        meta: BTreeMap::new(),
        values: None,
        builds: BTreeMap::new(),
    };
    for ((rel, _), d) in found.iter().zip(&digests) {
        feed(&mut all, &[b"f", rel.as_bytes(), d]);
        if detail == Detail::Full {
            m.files.insert(rel.clone(), hex(&d[..SHORT / 2]));
        }
    }
    m.env = named(&mut all, src.salt, "env", &def.env, |n| (src.env)(n));
    m.meta = named(&mut all, src.salt, "meta", &def.meta, |k| {
        src.meta.get(k).cloned()
    });
    if !def.values.is_empty() {
        let mut h = Sha256::new();
        let values: Vec<&[u8]> = def.values.iter().map(|v| v.as_bytes()).collect();
        feed(&mut h, &values);
        let d: [u8; 32] = h.finalize().into();
        feed(&mut all, &[b"values", &d]);
        m.values = Some(hex(&d[..SHORT / 2]));
    }
    for entry in &def.builds {
        let (label, value) = (src.builds)(entry)?;
        match &value {
            Some(v) => {
                let d: [u8; 32] = Sha256::digest(v.as_bytes()).into();
                feed(&mut all, &[b"build", label.as_bytes(), b"=", &d]);
                m.builds.insert(label, Some(crate::manifest::shown(v, &d)));
            }
            None => {
                feed(&mut all, &[b"build", label.as_bytes(), b"none"]);
                m.builds.insert(label, None);
            }
        }
    }
    m.digest = hex(&all.finalize());
    Ok(m)
}

/// The globs a completion recorded beyond its plan's (`recorded`: what a caller
/// discovered, the Ansible callback's roles): hashed again with the plan's to compare.
pub fn extra_globs(recorded: &[String], def: &InputsDef) -> Vec<String> {
    recorded
        .iter()
        .filter(|g| !def.files.contains(g))
        .cloned()
        .collect()
}

/// Whether a state's inputs changed. When it recorded files and not one of them is under
/// the root now, the root is far more likely wrong than every file deleted: that is an
/// error, not a rerun of hours of work.
fn compare(
    state: u8,
    old: &Manifest,
    new: &Manifest,
    src: &Sources<'_>,
) -> Result<Option<(StaleKind, Vec<String>)>> {
    if !old.files.is_empty() && new.files.is_empty() {
        return Err(Error::InvalidInput(format!(
            "none of the input files state {state} completed with ({}) is under the inputs root {}: run from the checkout they are relative to, or pass --inputs-root DIR (BUILDSTATE_INPUTS_ROOT); --no-inputs skips the comparison",
            old.globs.join(", "),
            src.root.display()
        )));
    }
    Ok((new.digest != old.digest).then(|| (StaleKind::Changed, changes(old, new))))
}

/// The part of a stored manifest a comparison needs first.
#[derive(Deserialize)]
struct Head {
    digest: String,
    #[serde(default)]
    globs: Vec<String>,
}

fn corrupt(seq: u64, e: serde_json::Error) -> Error {
    Error::Corrupt(format!("event {seq} inputs: {e}"))
}

/// The completed states of `b` that are stale, in plan order. The first is where the
/// build reruns from; every completed state after it follows (kind `After`). With
/// `every` the inputs of the later states are checked too, to say what changed in each
/// (the plan view); otherwise hashing stops at the first stale state.
pub fn stale_states(
    b: &Build,
    plan: &Plan,
    marks: &[Mark],
    src: &Sources<'_>,
    cache: &mut FileCache,
    every: bool,
) -> Result<Vec<Stale>> {
    let Some(current) = b.current_state else {
        return Ok(Vec::new());
    };
    let mut out: Vec<Stale> = Vec::new();
    for s in plan.states.iter().filter(|s| s.id <= current) {
        let first_found = out.first().map(|f| f.state);
        let after = |first: u8| Stale {
            state: s.id,
            name: s.name.clone(),
            kind: StaleKind::After,
            reasons: vec![format!("after stale state {first}")],
        };
        if let (Some(first), false) = (first_found, every) {
            out.push(after(first));
            continue;
        }
        let Some(done) = Mark::last_done(marks, s.id) else {
            continue;
        };
        // The latest verdict since it completed: a drift until a later verify passes.
        let drift = Mark::drift_since(marks, done, s.id);
        let own = if let Some(d) = drift {
            Some((
                StaleKind::Drifted,
                vec![format!(
                    "verify failed: {}",
                    crate::decide::headline(d.message.as_deref().unwrap_or("no output"), 200)
                )],
            ))
        } else if let (Some(raw), EventKind::Complete | EventKind::Reused) =
            (done.inputs.as_deref(), done.kind)
        {
            let head: Head = serde_json::from_str(raw).map_err(|e| corrupt(done.seq, e))?;
            let def = s.inputs.clone().unwrap_or_default();
            let extra = extra_globs(&head.globs, &def);
            let now = compute(&def, &extra, src, cache, Detail::Digest)?;
            if now.digest == head.digest {
                None
            } else {
                // Changed: now name what, from the full manifests.
                let old: Manifest = serde_json::from_str(raw).map_err(|e| corrupt(done.seq, e))?;
                let new = compute(&def, &extra, src, cache, Detail::Full)?;
                compare(s.id, &old, &new, src)?
            }
        } else {
            None
        };
        match (own, first_found) {
            (Some((kind, reasons)), _) => out.push(Stale {
                state: s.id,
                name: s.name.clone(),
                kind,
                reasons,
            }),
            (None, Some(first)) => out.push(after(first)),
            (None, None) => {}
        }
    }
    Ok(out)
}

/// The process environment, as input sources see it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The manifest to record with the completion of `state`: its declared inputs plus
/// `extra_globs`, hashed under `root` (resolved only when there is something to hash).
/// `None` when the state has no inputs.
pub fn for_completion(
    writer: &mut crate::sync::Writer,
    build_id: &str,
    state: u8,
    root_dir: Option<&Path>,
    extra_globs: &[String],
) -> Result<Option<Box<Manifest>>> {
    let Some(b) = writer.store().build(build_id)? else {
        return Ok(None);
    };
    let plan = writer.store().plan(&b.plan_hash)?;
    let def = plan.state(state).and_then(|s| s.inputs.clone());
    if def.is_none() && extra_globs.is_empty() {
        return Ok(None);
    }
    let def = def.unwrap_or_default();
    let root = root(root_dir)?;
    crate::parents::refresh_consumed(writer, &b, &plan, Some(state))?;
    let store = writer.store();
    let meta = store.metadata(build_id)?;
    let mut cache = FileCache::load(store, &root)?;
    let builds = outputs_here(store, &b, &meta);
    let src = Sources {
        root,
        env: &process_env,
        meta: &meta,
        salt: &b.lineage,
        builds: &builds,
    };
    let m = compute(&def, extra_globs, &src, &mut cache, Detail::Full)?;
    cache.save(store, &src.root);
    Ok(Some(Box::new(m)))
}

/// Whether any completed state could be stale: inputs recorded, or a drift.
fn may_go_stale(marks: &[Mark]) -> bool {
    marks
        .iter()
        .any(|m| m.inputs.is_some() || m.kind == EventKind::Drift)
}

/// The stale completed states of `b` (see [`stale_states`]), judged against the files
/// under `root_dir` (default: `BUILDSTATE_INPUTS_ROOT`, else the working directory).
pub fn stale_of(
    writer: &mut crate::sync::Writer,
    b: &Build,
    plan: &Plan,
    root_dir: Option<&Path>,
    every: bool,
) -> Result<Vec<Stale>> {
    if b.current_state.is_none() {
        return Ok(Vec::new());
    }
    let marks = writer.store().marks(&b.build_id)?;
    if !may_go_stale(&marks) {
        return Ok(Vec::new());
    }
    crate::parents::refresh_consumed(writer, b, plan, b.current_state)?;
    let store = writer.store();
    let needs_files = marks.iter().any(|m| m.inputs.is_some());
    let root = if needs_files {
        root(root_dir)?
    } else {
        root_dir.map(Path::to_path_buf).unwrap_or_default()
    };
    let meta = store.metadata(&b.build_id)?;
    let mut cache = if needs_files {
        FileCache::load(store, &root)?
    } else {
        FileCache::default()
    };
    let builds = outputs_here(store, b, &meta);
    let src = Sources {
        root,
        env: &process_env,
        meta: &meta,
        salt: &b.lineage,
        builds: &builds,
    };
    let stale = stale_states(b, plan, &marks, &src, &mut cache, every)?;
    cache.save(store, &src.root);
    Ok(stale)
}

/// Before `state` starts: if it is a completed state that is stale (the first one), the
/// build is reopened from it (a `rerun` event naming what changed), so that it may run
/// again. Nothing happens for a state that is not completed. Returns whether it reopened.
pub fn rerun_if_stale(
    w: &mut crate::sync::Writer,
    build_id: &str,
    state: u8,
    root_dir: Option<&Path>,
    actor: &crate::context::Actor,
    ctx: &crate::model::Ctx<'_>,
) -> Result<bool> {
    w.refresh(build_id)?;
    rerun_if_stale_here(w, build_id, state, root_dir, None, actor, ctx)
}

/// [`rerun_if_stale`] judged on this database's copy as it is, for a caller that has
/// just brought it up to date (run-state, at the top of each round), with the stale
/// states it already found for this copy (`known`), if any: no second pull, no second
/// hash. The write itself still goes through the remote in remote mode.
pub fn rerun_if_stale_here(
    w: &mut crate::sync::Writer,
    build_id: &str,
    state: u8,
    root_dir: Option<&Path>,
    known: Option<&[crate::manifest::Stale]>,
    actor: &crate::context::Actor,
    ctx: &crate::model::Ctx<'_>,
) -> Result<bool> {
    let Some(b) = w.store().build(build_id)? else {
        return Ok(false);
    };
    if b.current_state.is_none_or(|c| state > c)
        || matches!(
            b.status,
            crate::model::Status::Running | crate::model::Status::Cancelled
        )
    {
        return Ok(false);
    }
    let found;
    let stale = match known {
        Some(k) => k,
        None => {
            let plan = w.store().plan(&b.plan_hash)?;
            found = stale_of(w, &b, &plan, root_dir, false)?;
            &found
        }
    };
    let Some(first) = stale.first().filter(|f| f.state == state) else {
        return Ok(false);
    };
    let t = crate::model::Transition::Reopen {
        from: Some(state),
        reason: first.sentence(),
        why: crate::model::Reopen::Stale,
    };
    let ctx = crate::model::Ctx {
        lease_ttl: None,
        fence: None,
        ..*ctx
    };
    w.transition(build_id, &t, actor, &ctx)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src<'a>(root: &Path, meta: &'a BTreeMap<String, String>) -> Sources<'a> {
        Sources {
            root: root.to_path_buf(),
            env: &|n| (n == "IMAGE_VERSION").then(|| "9.4".to_string()),
            meta,
            salt: "lineage-1",
            builds: &no_builds,
        }
    }

    #[test]
    fn a_changed_file_is_named_and_an_unchanged_tree_reads_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let role = dir.path().join("roles/users/tasks");
        std::fs::create_dir_all(&role).unwrap();
        std::fs::write(role.join("main.yml"), "- name: users\n").unwrap();
        std::fs::write(dir.path().join("roles/users/README"), "x").unwrap();
        std::fs::write(dir.path().join("other.txt"), "not an input").unwrap();
        let def = InputsDef {
            files: vec!["roles/users/**".into()],
            env: vec!["IMAGE_VERSION".into(), "NOT_SET_HERE".into()],
            meta: vec!["git_sha".into()],
            values: vec!["rhel9".into()],
            builds: Vec::new(),
        };
        let meta = BTreeMap::from([("git_sha".to_string(), "abc".to_string())]);
        let mut cache = FileCache::default();
        let a = compute(&def, &[], &src(dir.path(), &meta), &mut cache, Detail::Full).unwrap();
        assert_eq!(
            a.files.keys().collect::<Vec<_>>(),
            ["roles/users/README", "roles/users/tasks/main.yml"]
        );
        assert_eq!(a.env["NOT_SET_HERE"], "unset");
        assert!(a.validate().is_ok());
        assert!(cache.dirty && cache.entries.len() == 2);
        // The cache survives its stored form.
        let back = FileCache::from_bytes(&cache.to_bytes());
        assert_eq!(back.entries, cache.entries);
        // Only the digest: the same digest, no per-file names.
        let light = compute(
            &def,
            &[],
            &src(dir.path(), &meta),
            &mut cache,
            Detail::Digest,
        )
        .unwrap();
        assert_eq!(
            (light.digest.as_str(), light.files.len()),
            (a.digest.as_str(), 0)
        );
        // The same inputs give the same digest; the value of a variable is not stored.
        let b = compute(&def, &[], &src(dir.path(), &meta), &mut cache, Detail::Full).unwrap();
        assert_eq!(a, b);
        assert!(!serde_json::to_string(&a).unwrap().contains("9.4"));
        // An edit is named.
        std::fs::write(role.join("main.yml"), "- name: users, edited\n").unwrap();
        let c = compute(&def, &[], &src(dir.path(), &meta), &mut cache, Detail::Full).unwrap();
        assert_ne!(a.digest, c.digest);
        assert_eq!(changes(&a, &c), ["roles/users/tasks/main.yml changed"]);
        // Metadata and added/removed files too.
        let meta2 = BTreeMap::from([("git_sha".to_string(), "def".to_string())]);
        std::fs::remove_file(dir.path().join("roles/users/README")).unwrap();
        std::fs::write(role.join("new.yml"), "x").unwrap();
        let d = compute(
            &def,
            &[],
            &src(dir.path(), &meta2),
            &mut cache,
            Detail::Full,
        )
        .unwrap();
        assert_eq!(
            changes(&c, &d),
            [
                "roles/users/tasks/new.yml added",
                "roles/users/README removed",
                "metadata git_sha changed"
            ]
        );
    }

    #[test]
    fn the_cache_is_trusted_only_for_an_unchanged_and_settled_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "one").unwrap();
        let def = InputsDef {
            files: vec!["*.txt".into()],
            ..InputsDef::default()
        };
        let meta = BTreeMap::new();
        // A cache entry that claims another content for the file as it is now: used
        // only once the file is older than the entry by more than the racy window.
        let stat = Stat::of(&std::fs::metadata(&f).unwrap());
        let mut cache = FileCache::default();
        let key = (stat.dev, stat.ino);
        let fake = CacheEntry {
            stat,
            digest: [7; 32],
            hashed_ns: stat.mtime_ns.max(stat.ctime_ns) + 1,
        };
        cache.entries.insert(key, fake);
        let racy = compute(&def, &[], &src(dir.path(), &meta), &mut cache, Detail::Full).unwrap();
        assert_eq!(racy.files["a.txt"], hex(&Sha256::digest(b"one")[..8]));
        cache.entries.insert(
            key,
            CacheEntry {
                hashed_ns: fake.hashed_ns + 10 * RACY_NS,
                ..fake
            },
        );
        let trusted =
            compute(&def, &[], &src(dir.path(), &meta), &mut cache, Detail::Full).unwrap();
        assert_eq!(trusted.files["a.txt"], hex(&[7; 8]));
    }

    #[test]
    fn a_consumed_output_is_kept_as_it_is_and_a_long_one_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let def = InputsDef {
            builds: vec!["base-{image}:ami_id".into()],
            ..InputsDef::default()
        };
        let meta = BTreeMap::new();
        let with = |value: Option<String>| {
            let lookup = move |e: &str| {
                assert_eq!(e, "base-{image}:ami_id");
                Ok(("base-rhel9:ami_id".to_string(), value.clone()))
            };
            let src = Sources {
                builds: &lookup,
                ..src(dir.path(), &meta)
            };
            compute(&def, &[], &src, &mut FileCache::default(), Detail::Full).unwrap()
        };
        let a = with(Some("ami-1".into()));
        let b = with(Some("ami-2".into()));
        let none = with(None);
        assert_eq!(a.builds["base-rhel9:ami_id"].as_deref(), Some("ami-1"));
        assert!(a.validate().is_ok());
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.digest, none.digest);
        assert_eq!(
            changes(&a, &b),
            ["build base-rhel9's output ami_id changed: it was 'ami-1' when this state completed, it is 'ami-2' now"]
        );
        assert!(changes(&a, &none)[0].ends_with("it is none now"));
        // A long value: its start and a digest, while the overall digest sees all of it.
        let long = "x".repeat(5000);
        let l1 = with(Some(long.clone()));
        let l2 = with(Some(format!("{long}y")));
        let kept = l1.builds["base-rhel9:ami_id"].clone().unwrap();
        assert!(kept.len() < 300 && kept.contains("5000 bytes"), "{kept}");
        assert!(l1.validate().is_ok());
        assert_ne!(l1.digest, l2.digest);
    }

    #[test]
    fn globs_that_leave_the_root_are_refused() {
        for g in ["/etc/**", "../x/**", "a/../../b", ""] {
            assert!(check_glob(g).is_err(), "{g}");
        }
        assert!(check_glob("ansible/roles/users/**").is_ok());
        assert_eq!(
            glob_base("ansible/roles/*/tasks/**"),
            PathBuf::from("ansible/roles")
        );
        assert_eq!(glob_base("main.yml"), PathBuf::new());
    }
}
