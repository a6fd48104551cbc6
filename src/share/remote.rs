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
//! The objects themselves are behind [`Objects`] (`share/objects.rs`), which an
//! in-memory remote implements too, for unit tests of everything built on top.
//!
//! Requests have bounded timeouts and retries ([`RemoteOptions`]), so a server that is
//! down, slow or failing gives a clear error within a bounded time.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

pub use super::objects::same_etag;
use super::objects::{Cloud, Folder, Memory, Objects, Progress, Put};
use crate::snapshot::Keys;
use crate::{Error, Result};

/// How long one request may take, and how long retries may go on, before the remote is
/// reported unavailable.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_timeout: Duration,
    pub max_retries: usize,
    /// Cloud configuration on top of what the environment gives, by the variable names
    /// the clouds' clients read (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_KEY`,
    /// `GOOGLE_SERVICE_ACCOUNT`, `AZURITE_BLOB_STORAGE_URL`): the Concourse resource's
    /// `source.credentials`, handed over as values rather than set in the process's
    /// environment. Each value wins over the variable's.
    pub config: Vec<(String, String)>,
    /// How far this machine's clock may be from the remote's before a remote-mode
    /// command refuses to write or decide (`BUILDSTATE_MAX_CLOCK_SKEW`); `None`: the
    /// check is off.
    pub max_clock_skew: Option<Duration>,
    /// The keys snapshots are signed with and checked against (`BUILDSTATE_SNAPSHOT_KEY`),
    /// when configured.
    pub keys: Option<Arc<Keys>>,
}

/// The default of `BUILDSTATE_MAX_CLOCK_SKEW`.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(30),
            max_retries: 3,
            config: Vec::new(),
            max_clock_skew: Some(DEFAULT_MAX_CLOCK_SKEW),
            keys: None,
        }
    }
}

impl RemoteOptions {
    /// The configuration given for the variables that start with `prefix`, as the
    /// builder's configuration keys (object_store names them by the variable's name in
    /// lower case, as its `from_env` reads them); a name it has no key for is passed
    /// over, as `from_env` passes it over.
    fn given<K: std::str::FromStr>(&self, prefix: &str) -> Vec<(K, &str)> {
        self.config
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse().ok()?, v.as_str())))
            .collect()
    }

    /// A variable's value: the one given in [`RemoteOptions::config`], else the
    /// environment's.
    fn var(&self, name: &str) -> Option<String> {
        self.config
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

/// An object read from a remote, with the ETag a conditional write will compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub etag: String,
}

/// A remote and its client. A clone shares the client (its connections and runtime),
/// which any thread may use.
#[derive(Clone)]
pub struct Remote {
    /// The URL as given, without any credentials in it: safe to print and to key
    /// `remote_sync` rows with.
    name: String,
    objects: Arc<dyn Objects>,
    /// Snapshot signing keys (`BUILDSTATE_SNAPSHOT_KEY`), when configured.
    keys: Option<Arc<crate::snapshot::Keys>>,
    /// [`RemoteOptions::max_clock_skew`].
    max_clock_skew: Option<Duration>,
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

/// A runtime for a client's requests (the object stores', Slack's), with every driver.
pub fn runtime(b: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime> {
    b.enable_all().build().map_err(|source| Error::Io {
        path: "tokio runtime".into(),
        source,
    })
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
        let keys = opts.keys.clone();
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
                    objects: Arc::new(Folder {
                        name: name.clone(),
                        dir,
                        lock_wait: opts.retry_timeout,
                    }),
                    name,
                    keys,
                    max_clock_skew: opts.max_clock_skew,
                });
            }
            "s3" | "s3a" => {
                use object_store::aws::AmazonS3ConfigKey as K;
                let b = timeouts.iter().fold(
                    object_store::aws::AmazonS3Builder::from_env(),
                    |b, (k, v)| b.with_config(K::Client(*k), v),
                );
                let b = opts
                    .given::<K>("AWS_")
                    .into_iter()
                    .fold(b, |b, (k, v)| b.with_config(k, v))
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
                let b = timeouts.iter().fold(
                    object_store::azure::MicrosoftAzureBuilder::from_env(),
                    |b, (k, v)| b.with_config(K::Client(*k), v),
                );
                let b = opts
                    .given::<K>("AZURE_")
                    .into_iter()
                    .fold(b, |b, (k, v)| b.with_config(k, v))
                    .with_url(url)
                    .with_retry(retry.clone());
                let emulator = b
                    .get_config_value(&K::UseEmulator)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                clock_url = match b.get_config_value(&K::Endpoint) {
                    Some(e) => e,
                    None if emulator => opts
                        .var("AZURITE_BLOB_STORAGE_URL")
                        .unwrap_or_else(|| "http://127.0.0.1:10000".into()),
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
                use object_store::gcp::GoogleConfigKey as K;
                clock_url = "https://storage.googleapis.com".into();
                let b = timeouts.iter().fold(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env(),
                    |b, (k, v)| b.with_config(K::Client(*k), v),
                );
                opts.given::<K>("GOOGLE_")
                    .into_iter()
                    .fold(b, |b, (k, v)| b.with_config(k, v))
                    .with_url(url)
                    .with_retry(retry.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?
            }),
            other => return Err(bad(format!("unknown scheme '{other}'"))),
        };
        // Only an object store's client needs a runtime (a folder's writes are local).
        let rt = runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2))?;
        Ok(Remote {
            objects: Arc::new(Cloud {
                name: name.clone(),
                store,
                prefix,
                clock_url,
                request_timeout: opts.request_timeout,
                rt,
            }),
            name,
            keys,
            max_clock_skew: opts.max_clock_skew,
        })
    }

    /// A remote in memory (`memory`), for tests: Remotes made from the same `Memory`
    /// share its objects, as machines share a bucket.
    pub fn in_memory(memory: Arc<Memory>) -> Remote {
        Remote {
            name: "memory".into(),
            objects: memory,
            keys: None,
            max_clock_skew: Some(DEFAULT_MAX_CLOCK_SKEW),
        }
    }

    /// The URL without credentials.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How far this machine's clock may be from the remote's (`None`: not checked).
    pub fn max_clock_skew(&self) -> Option<Duration> {
        self.max_clock_skew
    }

    /// A snapshot as this process writes it to the remote (signed when it has keys).
    pub fn encode(&self, snap: &crate::snapshot::Snapshot) -> Vec<u8> {
        snap.to_signed_json(self.keys.as_deref())
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
        let theirs = self.objects.now_ms()?;
        let after = std::time::SystemTime::now();
        let ours = ms(before) / 2 + ms(after) / 2;
        Ok(ours - theirs)
    }

    /// A snapshot read from the remote, validated (and its signature checked when this
    /// process has keys).
    pub fn decode(&self, bytes: &[u8]) -> Result<crate::snapshot::Snapshot> {
        crate::snapshot::Snapshot::from_signed_json(bytes, self.keys.as_deref())
    }

    fn key(build_id: &str) -> String {
        format!("builds/{build_id}.json")
    }

    /// A read object as a snapshot object: it needs an ETag for compare-and-swap.
    fn fetched(&self, key: &str, o: Option<(Vec<u8>, Option<String>)>) -> Result<Option<Fetched>> {
        o.map(|(bytes, etag)| match etag {
            Some(etag) => Ok(Fetched { bytes, etag }),
            None => Err(Error::Remote(format!(
                "remote {}: the server gave no ETag for {}: it cannot do compare-and-swap",
                self.name,
                self.objects.locate(key)
            ))),
        })
        .transpose()
    }

    /// The build's snapshot object, if there is one.
    pub fn get(&self, build_id: &str) -> Result<Option<Fetched>> {
        crate::model::validate_build_id(build_id)?;
        let key = Self::key(build_id);
        let what = format!("read {}", self.objects.locate(&key));
        let o = self.objects.get(&key, &what)?;
        self.fetched(&key, o)
    }

    /// The build's snapshot object only if it changed since it had ETag `etag` (one
    /// conditional read): `None` when unchanged, else what [`Remote::get`] gives.
    pub fn get_if_changed(&self, build_id: &str, etag: &str) -> Result<Option<Option<Fetched>>> {
        crate::model::validate_build_id(build_id)?;
        let key = Self::key(build_id);
        let what = format!("read {}", self.objects.locate(&key));
        match self.objects.get_if_changed(&key, etag, &what)? {
            None => Ok(None),
            Some(o) => self.fetched(&key, o).map(Some),
        }
    }

    /// Write the build's snapshot object: create-only when `expected` is `None`, else
    /// only if the object's ETag is still `expected`. Returns the new ETag.
    pub fn put(&self, build_id: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<String> {
        crate::model::validate_build_id(build_id)?;
        self.objects.put(&Self::key(build_id), bytes, expected)
    }

    /// Many conditional writes at once (`push --all`): at most `parallel` in flight.
    /// `progress` is called after each one. The results come back in input order.
    pub fn put_many(
        &self,
        items: Vec<Put>,
        parallel: usize,
        progress: Progress,
    ) -> Vec<Result<String>> {
        let keyed = items
            .into_iter()
            .map(|(id, bytes, etag)| (Self::key(&id), bytes, etag))
            .collect();
        // The ids come from this database, which took each only valid.
        self.objects.put_many(keyed, parallel, progress)
    }

    /// Many reads at once (`pull --all`, `status`), in input order.
    pub fn get_many(&self, ids: &[String], parallel: usize) -> Vec<Result<Option<Fetched>>> {
        let keys: Vec<String> = ids.iter().map(|id| Self::key(id)).collect();
        self.objects
            .get_many(&keys, parallel)
            .into_iter()
            .zip(&keys)
            .map(|(r, key)| r.and_then(|o| self.fetched(key, o)))
            .collect()
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
        let mut ids: Vec<(String, Option<String>)> = self
            .objects
            .list("builds", "list builds")?
            .into_iter()
            .filter_map(|(name, etag)| name.strip_suffix(".json").map(|id| (id.to_string(), etag)))
            .collect();
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
        let what = format!("read {}", self.objects.locate(&key));
        match self.objects.get(&key, &what)? {
            Some((current, etag)) if current == expected => {
                let etag = self.fetched(&key, Some((current, etag)))?.map(|f| f.etag);
                self.objects.put(&key, bytes, etag.as_deref()).map(|_| ())
            }
            _ => Err(Error::RemoteChanged(format!(
                "remote {}: {} changed since this database last read or wrote it (another worker wrote first); nothing was overwritten: pull it (`sync-cloud pull`), then push again",
                self.name,
                self.objects.locate(&key)
            ))),
        }
    }

    /// Read an archived build's snapshot, if there is one.
    pub fn get_archive(&self, build_id: &str) -> Result<Option<Vec<u8>>> {
        crate::model::validate_build_id(build_id)?;
        self.get_named(&Self::archive_key(build_id), "read the archive")
    }

    fn put_new(&self, key: &str, bytes: Vec<u8>, what: &str) -> Result<bool> {
        self.objects.put_new(key, bytes, what)
    }

    fn get_named(&self, key: &str, what: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.objects.get(key, what)?.map(|(bytes, _)| bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_bad_ones_explained() {
        let o = RemoteOptions::default();
        for url in ["s3://bucket/prefix", "gs://bucket/a/b", "file:///tmp/x"] {
            let r = Remote::open(url, o.clone()).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(r.name(), url);
        }
        // Credentials in the URL never reach the name that is printed and stored.
        let r = Remote::open("s3://AKIAIOSFODNN7EXAMPLE:pw@bucket/p?x=1", o.clone()).unwrap();
        assert_eq!(r.name(), "s3://bucket/p");
        for (url, want) in [
            ("ftp://x/y", "unknown scheme 'ftp'"),
            ("not a url", "invalid remote"),
            ("file://host/x", "not host 'host'"),
            ("s3:///nobucket", "bucket or container is missing"),
            // The test environment has no Azure account: the error says what to set.
            ("az://container/p", "AZURE_STORAGE_ACCOUNT_NAME"),
        ] {
            let e = Remote::open(url, o.clone()).err().unwrap().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    /// Configuration handed over as values (the Concourse resource's credentials) is
    /// what the client is built with, as if the variables were set: the Azure account
    /// the environment lacks (above) is given here, and the remote opens.
    #[test]
    fn given_configuration_counts_as_the_variables_would() {
        let given = RemoteOptions {
            config: vec![
                ("AZURE_STORAGE_ACCOUNT_NAME".into(), "acct".into()),
                ("AZURE_STORAGE_ACCOUNT_KEY".into(), "a2V5".into()),
                ("AWS_ACCESS_KEY_ID".into(), "not for azure".into()),
            ],
            ..RemoteOptions::default()
        };
        assert!(std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none());
        let r = Remote::open("az://container/p", given).unwrap();
        assert_eq!(r.name(), "az://container/p");
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
