//! Remotes: where build snapshots are shared between machines, addressed by URL.
//!
//! | URL | backend | credentials |
//! | --- | --- | --- |
//! | `s3://bucket/prefix` | S3 and S3-compatibles (object_store) | `AWS_*` variables (`AWS_ENDPOINT` for a compatible server) |
//! | `az://container/prefix` | Azure Blob (object_store) | `AZURE_STORAGE_*` variables |
//! | `gs://bucket/prefix` | Google Cloud Storage (object_store) | `GOOGLE_*` variables |
//! | `file:///path` | a folder (ours) | file permissions |
//!
//! Every write is conditional: [`Remote::put`] with no expected ETag is create-only
//! (`If-None-Match: *`), with one it is `If-Match` on it. A lost race is
//! [`Error::RemoteChanged`], never an overwrite. object_store's local-filesystem store
//! cannot do `If-Match`, so `file://` is a folder of our own: each write takes an
//! exclusive `flock` on the folder's lock file, compares the current content's hash (its
//! ETag) and replaces the object by rename.
//!
//! Requests have bounded timeouts and retries ([`RemoteOptions`]), so a server that is
//! down, slow or failing gives a clear error within a bounded time.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// How long one request may take, and how long retries may go on, before the remote is
/// reported unavailable.
#[derive(Debug, Clone, Copy)]
pub struct RemoteOptions {
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_timeout: Duration,
    pub max_retries: usize,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(30),
            max_retries: 3,
        }
    }
}

impl RemoteOptions {
    /// The defaults, with `BUILDSTATE_REMOTE_TIMEOUT` (a duration: the whole budget for
    /// one operation, retries included) when set.
    pub fn from_env() -> Result<RemoteOptions> {
        let mut o = RemoteOptions::default();
        if let Ok(v) = std::env::var("BUILDSTATE_REMOTE_TIMEOUT") {
            let d =
                crate::time::parse_bounded_duration(&v, Duration::from_millis(1)).map_err(|e| {
                    Error::InvalidInput(format!("invalid BUILDSTATE_REMOTE_TIMEOUT: {e}"))
                })?;
            o.retry_timeout = d;
            o.request_timeout = o.request_timeout.min(d);
            o.connect_timeout = o.connect_timeout.min(d);
        }
        Ok(o)
    }
}

/// An object read from a remote, with the ETag a conditional write will compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub etag: String,
}

enum Backend {
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: ObjPath,
    },
    Folder {
        dir: PathBuf,
        /// How long a write waits for another writer's lock (the remote timeout).
        lock_wait: Duration,
    },
}

pub struct Remote {
    /// The URL as given, without any credentials in it: safe to print and to key
    /// `remote_sync` rows with.
    name: String,
    /// The URL as given (it may hold credentials: never printed), to open it again.
    url: String,
    opts: RemoteOptions,
    backend: Backend,
    /// Snapshot signing keys (`BUILDSTATE_SNAPSHOT_KEY`), when configured.
    keys: Option<crate::snapshot::Keys>,
    /// Where to ask an object store for its time (an HTTP `Date` header).
    clock_url: Option<String>,
    request_timeout: Duration,
    rt: tokio::runtime::Runtime,
}

/// The URL without user:password@ and query string, for messages and bookkeeping.
fn display_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string().trim_end_matches('/').to_string()
}

fn remote_error(name: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Remote(format!(
        "remote {name}: could not {what}: {}",
        crate::redact::redact(&e.to_string())
    ))
}

/// Install ring's crypto as the process's TLS provider (once; later calls do nothing).
/// Every HTTPS client (the object stores', Slack's) is built after it: reqwest, built
/// without a provider of its own, panics otherwise (docs/decisions.md).
pub fn ensure_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Remote {
    /// Parse a remote URL and set up its client (no request is made yet).
    pub fn open(url: &str, opts: RemoteOptions) -> Result<Remote> {
        ensure_tls();
        let bad = |why: String| {
            Error::InvalidInput(format!(
                "invalid remote '{}': {why}; use s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or file:///path",
                crate::redact::redact(url)
            ))
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let name = display_url(&parsed);
        let keys = crate::snapshot::Keys::from_env()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        // Timeouts go in as configuration keys, on top of what each builder read from
        // the environment (AWS_ALLOW_HTTP, proxies, ...), which with_client_options
        // would replace.
        use object_store::ClientConfigKey as C;
        let timeouts = [
            (
                C::Timeout,
                humantime::format_duration(opts.request_timeout).to_string(),
            ),
            (
                C::ConnectTimeout,
                humantime::format_duration(opts.connect_timeout).to_string(),
            ),
        ];
        let retry = object_store::RetryConfig {
            max_retries: opts.max_retries,
            retry_timeout: opts.retry_timeout,
            ..Default::default()
        };
        let prefix = ObjPath::from(parsed.path().trim_matches('/'));
        let host = parsed.host_str().unwrap_or("");
        if parsed.scheme() != "file" && host.is_empty() {
            return Err(bad("the bucket or container is missing".into()));
        }
        let clock_url: String;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                if !host.is_empty() && host != "localhost" {
                    return Err(bad(format!(
                        "a file URL names a local path (file:///path), not host '{host}'"
                    )));
                }
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute path".into()))?;
                return Ok(Remote {
                    name,
                    url: url.to_string(),
                    opts,
                    backend: Backend::Folder {
                        dir,
                        lock_wait: opts.retry_timeout,
                    },
                    keys,
                    clock_url: None,
                    request_timeout: opts.request_timeout,
                    rt,
                });
            }
            "s3" | "s3a" => {
                use object_store::aws::AmazonS3ConfigKey as K;
                let b = timeouts
                    .iter()
                    .fold(
                        object_store::aws::AmazonS3Builder::from_env(),
                        |b, (k, v)| b.with_config(K::Client(*k), v),
                    )
                    .with_url(url)
                    .with_retry(retry.clone());
                let region = b.get_config_value(&K::Region);
                clock_url = b.get_config_value(&K::Endpoint).unwrap_or_else(|| {
                    format!(
                        "https://s3.{}.amazonaws.com",
                        region.as_deref().unwrap_or("us-east-1")
                    )
                });
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "az" | "azure" | "abfs" | "abfss" => Arc::new({
                use object_store::azure::AzureConfigKey as K;
                let b = timeouts
                    .iter()
                    .fold(
                        object_store::azure::MicrosoftAzureBuilder::from_env(),
                        |b, (k, v)| b.with_config(K::Client(*k), v),
                    )
                    .with_url(url)
                    .with_retry(retry.clone());
                let emulator = b
                    .get_config_value(&K::UseEmulator)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                clock_url = match b.get_config_value(&K::Endpoint) {
                    Some(e) => e,
                    None if emulator => std::env::var("AZURITE_BLOB_STORAGE_URL")
                        .unwrap_or_else(|_| "http://127.0.0.1:10000".into()),
                    None => format!(
                        "https://{}.blob.core.windows.net",
                        b.get_config_value(&K::AccountName).unwrap_or_default()
                    ),
                };
                b.build()
                    .map_err(|e| {
                        bad(format!(
                            "{e} (set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY, or AZURE_STORAGE_USE_EMULATOR=true for Azurite)"
                        ))
                    })?
            }),
            "gs" => Arc::new({
                clock_url = "https://storage.googleapis.com".into();
                timeouts
                    .iter()
                    .fold(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env(),
                        |b, (k, v)| {
                            b.with_config(object_store::gcp::GoogleConfigKey::Client(*k), v)
                        },
                    )
                    .with_url(url)
                    .with_retry(retry.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?
            }),
            other => return Err(bad(format!("unknown scheme '{other}'"))),
        };
        Ok(Remote {
            name,
            url: url.to_string(),
            opts,
            backend: Backend::Object { store, prefix },
            keys,
            clock_url: Some(clock_url),
            request_timeout: opts.request_timeout,
            rt,
        })
    }

    /// The URL without credentials.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same remote, opened again (for another thread: the lease keeper).
    pub fn reopen(&self) -> Result<Remote> {
        Remote::open(&self.url, self.opts)
    }

    /// A snapshot as this process writes it to the remote (signed when it has keys).
    pub fn encode(&self, snap: &crate::snapshot::Snapshot) -> Vec<u8> {
        snap.to_signed_json(self.keys.as_ref())
    }

    /// How far this machine's clock is ahead of the remote's (negative: behind), in
    /// milliseconds. A folder's time is the modification time the file system gives a
    /// file written there now (a shared mount's server stamps it); an object store's is
    /// the `Date` header of its answer to one request (1 s resolution, so the middle of
    /// that second is taken).
    pub fn clock_offset(&self) -> Result<i64> {
        let ms = |t: std::time::SystemTime| -> i64 {
            match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
            }
        };
        let before = std::time::SystemTime::now();
        let theirs = match &self.backend {
            Backend::Folder { dir, .. } => {
                let err = |e: std::io::Error| remote_error(&self.name, "read the folder's time", e);
                std::fs::create_dir_all(dir).map_err(err)?;
                let probe = tempfile::Builder::new()
                    .prefix(".clock-")
                    .tempfile_in(dir)
                    .map_err(err)?;
                ms(probe
                    .as_file()
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(err)?)
            }
            Backend::Object { .. } => {
                let url = self.clock_url.as_deref().unwrap_or_default();
                let timeout = self.request_timeout;
                let date = self.rt.block_on(async {
                    let client = reqwest::Client::builder()
                        .timeout(timeout)
                        .build()
                        .map_err(|e| {
                            remote_error(&self.name, "ask for its time", e.without_url())
                        })?;
                    let r = client.head(url).send().await.map_err(|e| {
                        remote_error(&self.name, "ask for its time", e.without_url())
                    })?;
                    Ok::<_, Error>(
                        r.headers()
                            .get(reqwest::header::DATE)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                    )
                })?;
                let Some(date) = date else {
                    return Err(Error::Remote(format!(
                        "remote {}: its server gave no Date header, so this machine's clock cannot be checked against it; set BUILDSTATE_MAX_CLOCK_SKEW=off to write without the check",
                        self.name
                    )));
                };
                let t = chrono::DateTime::parse_from_rfc2822(&date).map_err(|e| {
                    remote_error(&self.name, &format!("read its time from Date: {date:?}"), e)
                })?;
                t.timestamp_millis() + 500
            }
        };
        let after = std::time::SystemTime::now();
        let ours = ms(before) / 2 + ms(after) / 2;
        Ok(ours - theirs)
    }

    /// A snapshot read from the remote, validated (and its signature checked when this
    /// process has keys).
    pub fn decode(&self, bytes: &[u8]) -> Result<crate::snapshot::Snapshot> {
        crate::snapshot::Snapshot::from_signed_json(bytes, self.keys.as_ref())
    }

    fn key(prefix: &ObjPath, build_id: &str) -> ObjPath {
        let mut p = prefix.clone();
        for part in ["builds", &format!("{build_id}.json")] {
            p = p.clone().join(part);
        }
        p
    }

    /// The build's snapshot object, if there is one.
    pub fn get(&self, build_id: &str) -> Result<Option<Fetched>> {
        crate::model::validate_build_id(build_id)?;
        match &self.backend {
            Backend::Folder { dir, .. } => folder_get(&self.name, &folder_path(dir, build_id)),
            Backend::Object { store, prefix } => {
                self.rt
                    .block_on(object_get(&self.name, store, &Self::key(prefix, build_id)))
            }
        }
    }

    /// Write the build's snapshot object: create-only when `expected` is `None`, else
    /// only if the object's ETag is still `expected`. Returns the new ETag.
    pub fn put(&self, build_id: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<String> {
        crate::model::validate_build_id(build_id)?;
        match &self.backend {
            Backend::Folder { dir, lock_wait } => {
                folder_put(&self.name, dir, *lock_wait, build_id, &bytes, expected)
            }
            Backend::Object { store, prefix } => self.rt.block_on(object_put(
                &self.name,
                store,
                &Self::key(prefix, build_id),
                bytes,
                expected,
            )),
        }
    }

    /// Many conditional writes at once (`push --all`): at most `parallel` in flight.
    /// `progress` is called after each one. The results come back in input order.
    pub fn put_many(
        &self,
        items: Vec<(String, Vec<u8>, Option<String>)>,
        parallel: usize,
        progress: &(dyn Fn() + Sync),
    ) -> Vec<Result<String>> {
        match &self.backend {
            Backend::Folder { .. } => items
                .into_iter()
                .map(|(id, bytes, etag)| {
                    let r = self.put(&id, bytes, etag.as_deref());
                    progress();
                    r
                })
                .collect(),
            Backend::Object { store, prefix } => self.rt.block_on(async {
                futures::stream::iter(items.into_iter().map(|(id, bytes, etag)| {
                    let store = Arc::clone(store);
                    let key = Self::key(prefix, &id);
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
            }),
        }
    }

    /// Many reads at once (`pull --all`, `status`), in input order.
    pub fn get_many(&self, ids: &[String], parallel: usize) -> Vec<Result<Option<Fetched>>> {
        match &self.backend {
            Backend::Folder { .. } => ids.iter().map(|id| self.get(id)).collect(),
            Backend::Object { store, prefix } => self.rt.block_on(async {
                futures::stream::iter(ids.iter().map(|id| {
                    let store = Arc::clone(store);
                    let key = Self::key(prefix, id);
                    let name = self.name.clone();
                    async move { object_get(&name, &store, &key).await }
                }))
                .buffered(parallel.max(1))
                .collect()
                .await
            }),
        }
    }

    /// The build ids with a snapshot on the remote, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        Ok(self.list_tagged()?.into_iter().map(|(id, _)| id).collect())
    }

    /// The build ids with a snapshot on the remote, sorted, each with the ETag the
    /// listing gives (object stores; `None` for a folder, whose tags are its content's
    /// digest): a tag equal to the one last synced means the object has not changed
    /// since, and need not be fetched ([`crate::sync::pull_all`]).
    pub fn list_tagged(&self) -> Result<Vec<(String, Option<String>)>> {
        let mut ids = match &self.backend {
            Backend::Folder { dir, .. } => {
                let builds = dir.join("builds");
                match std::fs::read_dir(&builds) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(remote_error(&self.name, "list builds", e)),
                    Ok(entries) => entries
                        .filter_map(|e| e.ok())
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(|n| n.strip_suffix(".json"))
                                .map(|id| (id.to_string(), None))
                        })
                        .collect(),
                }
            }
            Backend::Object { store, prefix } => self.rt.block_on(async {
                let dir = prefix.clone().join("builds");
                let mut out = Vec::new();
                let mut stream = store.list(Some(&dir));
                while let Some(meta) = stream.next().await {
                    let meta = meta.map_err(|e| remote_error(&self.name, "list builds", e))?;
                    if let Some(id) = meta
                        .location
                        .filename()
                        .and_then(|n| n.strip_suffix(".json"))
                    {
                        out.push((id.to_string(), meta.e_tag.clone()));
                    }
                }
                Ok::<_, Error>(out)
            })?,
        };
        ids.retain(|(id, _)| crate::model::validate_build_id(id).is_ok());
        ids.sort();
        Ok(ids)
    }

    /// Store a whole-database backup under `backups/NAME` (create-only).
    pub fn put_backup(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        if self.put_new(&format!("backups/{name}"), bytes, "upload the backup")? {
            Ok(())
        } else {
            Err(Error::RemoteChanged(format!(
                "remote {}: backup '{name}' exists already; choose another name",
                self.name
            )))
        }
    }

    /// Read a backup written by [`Remote::put_backup`].
    pub fn get_backup(&self, name: &str) -> Result<Vec<u8>> {
        self.get_named(&format!("backups/{name}"), "read the backup")?
            .ok_or_else(|| {
                Error::InvalidInput(format!("remote {}: there is no backup '{name}'", self.name))
            })
    }

    /// Where an archived build's snapshot lives, relative to the remote's root.
    pub fn archive_key(build_id: &str) -> String {
        format!("archive/builds/{build_id}.json")
    }

    /// Write an archived build's snapshot under `archive/builds/ID.json`, create-only:
    /// `false` when an object is there already (the caller compares it).
    pub fn put_archive(&self, build_id: &str, bytes: Vec<u8>) -> Result<bool> {
        crate::model::validate_build_id(build_id)?;
        self.put_new(&Self::archive_key(build_id), bytes, "write the archive")
    }

    /// Replace the archived snapshot of `build_id` with `bytes`, only while it still
    /// holds `expected` (compare-and-swap: under the folder's lock, or If-Match on the
    /// object's ETag). For a newer copy of the same build replacing a stale one.
    pub fn replace_archive(&self, build_id: &str, bytes: Vec<u8>, expected: &[u8]) -> Result<()> {
        crate::model::validate_build_id(build_id)?;
        let key = Self::archive_key(build_id);
        match &self.backend {
            Backend::Folder { dir, lock_wait } => {
                let _lock = FolderLock::take(&self.name, dir, *lock_wait)?;
                let path = dir.join(&key);
                match std::fs::read(&path) {
                    Ok(current) if current == expected => replace_file(&self.name, &path, &bytes),
                    _ => Err(lost_race(&self.name, path.display(), false)),
                }
            }
            Backend::Object { store, prefix } => self.rt.block_on(async {
                let k = key.split('/').fold(prefix.clone(), |p, part| p.join(part));
                match object_get(&self.name, store, &k).await? {
                    Some(f) if f.bytes == expected => {
                        object_put(&self.name, store, &k, bytes, Some(&f.etag))
                            .await
                            .map(|_| ())
                    }
                    _ => Err(lost_race(&self.name, &k, false)),
                }
            }),
        }
    }

    /// Read an archived build's snapshot, if there is one.
    pub fn get_archive(&self, build_id: &str) -> Result<Option<Vec<u8>>> {
        crate::model::validate_build_id(build_id)?;
        self.get_named(&Self::archive_key(build_id), "read the archive")
    }

    /// Write the object at `key` ('/'-separated, relative to the root) only if none is
    /// there: `false` when one is.
    fn put_new(&self, key: &str, bytes: Vec<u8>, what: &str) -> Result<bool> {
        match &self.backend {
            Backend::Folder { dir, .. } => write_new_file(&self.name, &dir.join(key), &bytes),
            Backend::Object { store, prefix } => self.rt.block_on(async {
                let key = key.split('/').fold(prefix.clone(), |p, part| p.join(part));
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match store.put_opts(&key, bytes.into(), opts).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(remote_error(&self.name, what, e)),
                }
            }),
        }
    }

    /// Read the object at `key` ('/'-separated, relative to the root), if there is one.
    fn get_named(&self, key: &str, what: &str) -> Result<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Folder { dir, .. } => match std::fs::read(dir.join(key)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(remote_error(&self.name, what, e)),
            },
            Backend::Object { store, prefix } => self.rt.block_on(async {
                let key = key.split('/').fold(prefix.clone(), |p, part| p.join(part));
                match store.get(&key).await {
                    Ok(r) => r
                        .bytes()
                        .await
                        .map(|b| Some(b.to_vec()))
                        .map_err(|e| remote_error(&self.name, what, e)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(remote_error(&self.name, what, e)),
                }
            }),
        }
    }
}

async fn object_get(
    name: &str,
    store: &Arc<dyn ObjectStore>,
    key: &ObjPath,
) -> Result<Option<Fetched>> {
    match store.get(key).await {
        Ok(r) => {
            let etag = r.meta.e_tag.clone().ok_or_else(|| {
                Error::Remote(format!(
                    "remote {name}: the server gave no ETag for {key}: it cannot do compare-and-swap"
                ))
            })?;
            let bytes = r
                .bytes()
                .await
                .map_err(|e| remote_error(name, &format!("read {key}"), e))?;
            Ok(Some(Fetched {
                bytes: bytes.to_vec(),
                etag,
            }))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(remote_error(name, &format!("read {key}"), e)),
    }
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

fn folder_path(dir: &std::path::Path, build_id: &str) -> PathBuf {
    dir.join("builds").join(format!("{build_id}.json"))
}

/// Whether two ETags name the same object version. Servers quote them in headers and
/// not always in listings (Azure), so quotes do not count.
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
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

fn folder_get(name: &str, path: &std::path::Path) -> Result<Option<Fetched>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Fetched {
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

fn folder_put(
    name: &str,
    dir: &std::path::Path,
    lock_wait: Duration,
    build_id: &str,
    bytes: &[u8],
    expected: Option<&str>,
) -> Result<String> {
    let _lock = FolderLock::take(name, dir, lock_wait)?;
    let path = folder_path(dir, build_id);
    let current = folder_get(name, &path)?;
    match (current, expected) {
        (None, None) => {}
        (Some(c), Some(e)) if c.etag == e => {}
        (Some(_), None) => return Err(lost_race(name, path.display(), true)),
        (_, Some(_)) => return Err(lost_race(name, path.display(), false)),
    }
    replace_file(name, &path, bytes)?;
    Ok(content_etag(bytes))
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
    let dir = path.parent().expect("remote objects live in a folder");
    std::fs::create_dir_all(dir)
        .map_err(|e| remote_error(name, &format!("create {}", dir.display()), e))?;
    place_file(name, path, bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_bad_ones_explained() {
        let o = RemoteOptions::default();
        for url in ["s3://bucket/prefix", "gs://bucket/a/b", "file:///tmp/x"] {
            let r = Remote::open(url, o).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(r.name(), url);
        }
        // Credentials in the URL never reach the name that is printed and stored.
        let r = Remote::open("s3://AKIAIOSFODNN7EXAMPLE:pw@bucket/p?x=1", o).unwrap();
        assert_eq!(r.name(), "s3://bucket/p");
        for (url, want) in [
            ("ftp://x/y", "unknown scheme 'ftp'"),
            ("not a url", "invalid remote"),
            ("file://host/x", "not host 'host'"),
            ("s3:///nobucket", "bucket or container is missing"),
            // The test environment has no Azure account: the error says what to set.
            ("az://container/p", "AZURE_STORAGE_ACCOUNT_NAME"),
        ] {
            let e = Remote::open(url, o).err().unwrap().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn folder_writes_are_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let r = Remote::open(&url, RemoteOptions::default()).unwrap();
        assert_eq!(r.get("b").unwrap(), None);
        let e1 = r.put("b", b"one".to_vec(), None).unwrap();
        // Create-only: a second creator loses.
        assert!(matches!(
            r.put("b", b"x".to_vec(), None),
            Err(Error::RemoteChanged(_))
        ));
        let e2 = r.put("b", b"two".to_vec(), Some(&e1)).unwrap();
        // If-Match on a stale ETag loses, and nothing is overwritten.
        assert!(matches!(
            r.put("b", b"y".to_vec(), Some(&e1)),
            Err(Error::RemoteChanged(_))
        ));
        assert_eq!(
            r.get("b").unwrap().unwrap(),
            Fetched {
                bytes: b"two".to_vec(),
                etag: e2
            }
        );
        assert_eq!(r.list().unwrap(), ["b"]);
    }
}
