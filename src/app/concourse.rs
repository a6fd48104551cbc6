//! The `buildstate` Concourse resource type: `check`, `in` and `out` over the crate, in
//! remote mode (containers are ephemeral: the local database is a throwaway cache of the
//! remote). See docs/concourse.md for the source and params tables.
//!
//! Concourse runs `/opt/resource/check` with the request on stdin, `in DEST` and
//! `out SRC` with a folder argument and `BUILD_*` metadata in the environment
//! (<https://concourse-ci.org/implementing-resource-types.html>). stdout carries only the
//! JSON answer; everything for people goes to stderr.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::Actor;
use crate::environment::Settings;
use crate::model::{parse_meta_pair, InitRequest, Transition};
use crate::plan::Plan;
use crate::policy::Category;
use crate::remote::{Remote, RemoteOptions};
use crate::report::Report;
use crate::session::{Inputs, Session, Start};
use crate::store::Store;
use crate::sync::Writer;
use crate::{Error, Result};

/// The resource's `source`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The remote URL: s3://, az://, gs://, file:///.
    pub remote: String,
    /// One build; or `build_pattern` for every build whose id matches a glob.
    #[serde(default)]
    pub build_id: Option<String>,
    #[serde(default)]
    pub build_pattern: Option<String>,
    /// Credentials, as the environment variables each cloud reads (AWS_*, AZURE_*,
    /// GOOGLE_*): Concourse passes secrets through `source`, not the environment.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// A plan file for `init` (put), relative to the put's folder.
    #[serde(default)]
    pub plan: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Request {
    pub source: Source,
    #[serde(default)]
    pub version: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub params: Option<Value>,
}

impl Request {
    pub fn parse(stdin: &[u8]) -> Result<Request> {
        serde_json::from_slice(stdin).map_err(|e| {
            Error::InvalidInput(format!(
                "the request on stdin is not valid: {} (see docs/concourse.md for source and params)",
                crate::redact::redact(&e.to_string())
            ))
        })
    }
}

/// The source's credentials, checked, as configuration for the cloud clients (by the
/// variable names they read). Only the clouds' own variable names are taken.
fn credentials(source: &Source) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in &source.credentials {
        let allowed = ["AWS_", "AZURE_", "AZURITE_", "GOOGLE_"]
            .iter()
            .any(|p| k.starts_with(p));
        if !allowed
            || !k
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(Error::InvalidInput(format!(
                "source.credentials: '{k}' is not a cloud credential variable (AWS_*, AZURE_*, GOOGLE_*)"
            )));
        }
        // A value the environment cannot hold is refused, never echoed: it is a secret.
        if v.contains('\0') || v.len() > 16 * 1024 {
            return Err(Error::InvalidInput(format!(
                "source.credentials.{k}: the value holds a NUL byte or is longer than 16 KiB; fix the secret in your credential manager"
            )));
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

/// Open the source's remote with its credentials. An error never repeats a credential
/// value (a cloud client's message may quote one, e.g. a malformed `AWS_ALLOW_HTTP`).
fn open_remote(source: &Source, settings: &Settings) -> Result<Remote> {
    let config = credentials(source)?;
    let scrub = |m: String| {
        source
            .credentials
            .values()
            .filter(|v| v.len() >= 4)
            .fold(m, |m, v| m.replace(v.as_str(), "[REDACTED]"))
    };
    let opts = RemoteOptions {
        config,
        ..settings.remote.clone()
    };
    Remote::open(&source.remote, opts).map_err(|e| match e {
        Error::InvalidInput(m) => Error::InvalidInput(scrub(m)),
        Error::Remote(m) => Error::Remote(scrub(m)),
        other => other,
    })
}

/// A throwaway cache database in a temporary folder, in remote mode.
fn writer(source: &Source, dir: &Path, settings: &Settings) -> Result<Writer> {
    let remote = open_remote(source, settings)?;
    let store = Store::open_with(&dir.join("cache.db"), crate::store::DEFAULT_BUSY_TIMEOUT)?;
    Ok(Writer::new(store, Some(remote)))
}

fn version(build_id: &str, serial: u64) -> Value {
    json!({"build_id": build_id, "serial": serial.to_string()})
}

fn tmp() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|source| Error::Io {
        path: std::env::temp_dir(),
        source,
    })
}

/// `check`: the build's current version (its serial), or with a pattern every matching
/// build's, oldest change first, from the given version on.
pub fn check(req: &Request, settings: &Settings) -> Result<Value> {
    let remote = open_remote(&req.source, settings)?;
    let ids: Vec<String> = match (&req.source.build_id, &req.source.build_pattern) {
        (Some(id), None) => vec![id.clone()],
        (None, Some(pattern)) => {
            let glob = globset::Glob::new(pattern)
                .map_err(|e| Error::InvalidInput(format!("source.build_pattern '{pattern}': {e}")))?
                .compile_matcher();
            remote
                .list()?
                .into_iter()
                .filter(|id| glob.is_match(id))
                .collect()
        }
        _ => {
            return Err(Error::InvalidInput(
                "source: give exactly one of build_id and build_pattern".into(),
            ))
        }
    };
    let mut found = Vec::new();
    for (id, fetched) in ids.iter().zip(remote.get_many(&ids, crate::sync::PARALLEL)) {
        if let Some(f) = fetched? {
            let snap = remote.decode(&f.bytes)?;
            found.push((snap.build.updated_at, id.clone(), snap.serial));
        }
    }
    found.sort();
    let mut versions: Vec<Value> = found
        .iter()
        .map(|(_, id, serial)| version(id, *serial))
        .collect();
    // From the version Concourse has on (inclusive), if it is still current.
    if let Some(prev) = &req.version {
        if let Some(i) = versions.iter().position(|v| {
            v["build_id"].as_str() == prev.get("build_id").map(String::as_str)
                && v["serial"].as_str() == prev.get("serial").map(String::as_str)
        }) {
            versions.drain(..i);
        }
    }
    Ok(Value::Array(versions))
}

/// `in DEST`: decision.json, resume-metadata, snapshot.json, history.json and
/// outputs.json (the current outputs' values by key) of the version's build.
pub fn fetch(req: &Request, dest: &Path, settings: &Settings) -> Result<Value> {
    crate::report::check_output_dir(dest, "in: the destination")?;
    let v = req
        .version
        .as_ref()
        .ok_or_else(|| Error::InvalidInput("in: no version given".into()))?;
    let id = v
        .get("build_id")
        .ok_or_else(|| Error::InvalidInput("in: the version has no build_id".into()))?;
    let want: u64 = v
        .get("serial")
        .and_then(|s| s.parse().ok())
        .filter(|s| *s >= 1)
        .ok_or_else(|| {
            Error::InvalidInput(
                "in: the version has no serial of 1 or more (check emits them)".into(),
            )
        })?;
    let dir = tmp()?;
    let mut w = writer(&req.source, dir.path(), settings)?;
    w.refresh(id)?;
    let report = Report::load(
        Some(w.store()),
        id,
        &Plan::default_plan(),
        SystemTime::now(),
        true,
    )?;
    if !report.exists || report.serial < want {
        return Err(Error::InvalidInput(format!(
            "in: build '{id}' is at serial {} on the remote, older than the version asked for ({want})",
            report.serial
        )));
    }
    // `in` fetches exactly the version asked for: only the current state's decision and
    // summary exist, so an older version is refused rather than labelled wrongly.
    if report.serial > want {
        return Err(Error::InvalidInput(format!(
            "in: build '{id}' has moved on to serial {} since version {want}; `in` gives only a build's current version (docs/concourse.md): trigger a new job build to get it",
            report.serial
        )));
    }
    let report = report.in_syntax(crate::error::Syntax::Concourse);
    report.write_output(dest)?;
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(dest.join(name), bytes).map_err(|source| Error::Io {
            path: dest.join(name),
            source,
        })
    };
    write("snapshot.json", w.store().snapshot(id)?.to_json())?;
    write(
        "outputs.json",
        serde_json::to_vec_pretty(&crate::outputs::values(&report.outputs))
            .expect("text by key serializes"),
    )?;
    write(
        "history.json",
        serde_json::to_vec_pretty(&report.history).expect("events serialize"),
    )?;
    Ok(json!({
        "version": version(id, want),
        "metadata": metadata(&report),
    }))
}

fn metadata(r: &Report) -> Vec<Value> {
    let mut m = vec![
        json!({"name": "decision", "value": r.decision.decision.as_str()}),
        json!({"name": "status", "value": r.status.map_or("-", |s| s.as_str())}),
        json!({"name": "current_state", "value": r.current_state.map_or("none".into(), |s| s.to_string())}),
        json!({"name": "serial", "value": r.serial.to_string()}),
    ];
    if let Some(s) = r.decision.next_state {
        m.push(json!({"name": "next_state", "value": s.to_string()}));
    }
    m
}

/// The params of `out`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutParams {
    /// init, start, complete, fail, meta, output, retry, skip, cancel, force, reset
    pub action: String,
    #[serde(default)]
    pub build_id: Option<String>,
    /// A file (in the put's folder) holding the build id: e.g. from an earlier task.
    #[serde(default)]
    pub build_id_file: Option<String>,
    #[serde(default)]
    pub state: Option<u8>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_file: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// output: the values `state` (default: the active one) produced, by key.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// output: a Packer manifest.json in the put's folder whose last run's builds are
    /// recorded as outputs too (as `update-state output --packer-manifest`).
    #[serde(default)]
    pub packer_manifest: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub cloud: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    /// init: other builds' states (BUILD:STATE) every state of it waits for, as
    /// `init-state --after`.
    #[serde(default)]
    pub after: Vec<String>,
    /// The lease holder (default: the Concourse job build, so that a start and a
    /// complete in one job build match).
    #[serde(default)]
    pub owner: Option<String>,
    /// force: every state runs again (instead of `state`).
    #[serde(default)]
    pub all: bool,
    /// The folder (in the put's folder: an input such as the repository) the plan's
    /// input globs are relative to, for complete and start (default: the put's folder).
    #[serde(default)]
    pub inputs_root: Option<String>,
}

/// A path named by a param: inside the put's folder `src` once `..` and symbolic links
/// are resolved, and a folder (`dir`) or a file. The error names the param, never the
/// content.
fn inside(src: &Path, rel: &str, what: &str, dir: bool) -> Result<std::path::PathBuf> {
    let bad = |why: String| Error::InvalidInput(format!("{what}: {why}"));
    let kind = if dir { "folder" } else { "file" };
    let root = src
        .canonicalize()
        .map_err(|e| bad(format!("the put's folder {}: {e}", src.display())))?;
    let path = root.join(rel).canonicalize().map_err(|e| {
        bad(format!(
            "cannot read '{}' in the put's folder: {e}",
            crate::model::echo(rel)
        ))
    })?;
    let right_kind = if dir { path.is_dir() } else { path.is_file() };
    if !path.starts_with(&root) || !right_kind {
        return Err(bad(format!(
            "'{}' is not a {kind} inside the put's folder; name one relative to it, without leaving it",
            crate::model::echo(rel)
        )));
    }
    Ok(path)
}

/// The largest `error_file` kept: its last 64 KiB (as run-state keeps the end of stderr).
pub const MAX_ERROR_FILE: u64 = 64 * 1024;

/// A file named by a param, which must be inside the put's folder `src` (after resolving
/// `..` and symbolic links). At most `max` bytes are read: the last ones when `tail`,
/// else a longer file is refused. The file's content is never repeated in an error.
fn read_in(src: &Path, rel: &str, what: &str, max: u64, tail: bool) -> Result<String> {
    let path = inside(src, rel, what, false)?;
    let (note, bytes) = crate::files::read_limited(&path, what, max, tail)?;
    Ok(note + &String::from_utf8_lossy(&bytes))
}

/// `out SRC`: one transition, through the remote; the new serial is the new version.
pub fn put(req: &Request, src: &Path, settings: &Settings) -> Result<Value> {
    let params: OutParams = serde_json::from_value(req.params.clone().unwrap_or(Value::Null))
        .map_err(|e| Error::InvalidInput(format!("params: {e} (see docs/concourse.md)")))?;
    let id = match (
        &params.build_id,
        &params.build_id_file,
        &req.source.build_id,
    ) {
        (Some(id), _, _) => id.clone(),
        (None, Some(f), _) => read_in(src, f, "params.build_id_file", 1024, false)?
            .trim()
            .to_string(),
        (None, None, Some(id)) => id.clone(),
        _ => {
            return Err(Error::InvalidInput(
                "out: no build: set params.build_id, params.build_id_file or source.build_id"
                    .into(),
            ))
        }
    };
    let state = || {
        params.state.ok_or_else(|| {
            Error::InvalidInput(format!(
                "out: action '{}' needs params.state",
                params.action
            ))
        })
    };
    let reason = || {
        params.reason.clone().ok_or_else(|| {
            Error::InvalidInput(format!(
                "out: action '{}' needs params.reason",
                params.action
            ))
        })
    };
    let dir = tmp()?;
    let mut w = writer(&req.source, dir.path(), settings)?;
    let actor = crate::environment::actor("concourse");
    let now = SystemTime::now();
    let build = if params.action == "init" {
        let plan = match &req.source.plan {
            Some(p) => Plan::from_toml(&read_in(src, p, "source.plan", 1024 * 1024, false)?, p)?,
            None => Plan::default_plan(),
        };
        let req = InitRequest {
            build_id: id.clone(),
            cloud: params
                .cloud
                .clone()
                .ok_or_else(|| Error::InvalidInput("out: init needs params.cloud".into()))?,
            image: params
                .image
                .clone()
                .ok_or_else(|| Error::InvalidInput("out: init needs params.image".into()))?,
            plan,
            meta: params.meta.clone().into_iter().collect(),
            after: params.after.clone(),
        };
        crate::session::init(&mut w, &req, &actor, now)?.build
    } else {
        let t = match params.action.as_str() {
            "start" => Transition::Start { state: state()? },
            "complete" => Transition::complete(state()?),
            "fail" => Transition::Fail {
                state: state()?,
                message: match (&params.error, &params.error_file) {
                    (Some(m), _) => m.clone(),
                    (None, Some(f)) => read_in(src, f, "params.error_file", MAX_ERROR_FILE, true)?,
                    (None, None) => return Err(Error::InvalidInput("out: fail needs params.error or params.error_file".into())),
                },
                category: params.category.as_deref().map(Category::parse_input).transpose()?,
                exit_code: params.exit_code,
                signal: None,
                timed_out: false,
            },
            "meta" => Transition::Meta {
                pairs: params
                    .meta
                    .iter()
                    .map(|(k, v)| parse_meta_pair(&format!("{k}={v}")))
                    .collect::<Result<_>>()?,
            },
            "output" => {
                let mut pairs: Vec<(String, String)> = params.outputs.clone().into_iter().collect();
                let mut resources = Vec::new();
                if let Some(f) = &params.packer_manifest {
                    let text = read_in(src, f, "params.packer_manifest", MAX_ERROR_FILE, false)?;
                    let run = crate::outputs::from_packer_manifest(text.as_bytes(), f)?;
                    pairs.extend(run.outputs);
                    resources = run.artifacts;
                }
                Transition::Output { state: params.state, pairs, resources }
            }
            "retry" => Transition::Retry { state: state()?, reason: reason()? },
            "skip" => Transition::Skip { state: state()?, reason: reason()? },
            "cancel" => Transition::Cancel { reason: reason()? },
            "force" => Transition::Reopen {
                from: if params.all {
                    if params.state.is_some() {
                        return Err(Error::InvalidInput(
                            "out: force takes params.state or params.all, not both".into(),
                        ));
                    }
                    None
                } else {
                    Some(state().map_err(|_| {
                        Error::InvalidInput(
                            "out: action 'force' needs params.state (or params.all: true)".into(),
                        )
                    })?)
                },
                reason: reason()?,
                why: crate::model::Reopen::Force,
            },
            "reset" => Transition::Reopen {
                from: None,
                reason: reason()?,
                why: crate::model::Reopen::Reset,
            },
            other => {
                return Err(Error::InvalidInput(format!(
                    "out: unknown action '{other}': use init, start, complete, fail, meta, output, retry, skip, cancel, force or reset"
                )))
            }
        };
        // Default: the put's folder, where Concourse puts the job's inputs.
        let inputs_root = Some(inside(
            src,
            params.inputs_root.as_deref().unwrap_or("."),
            "params.inputs_root",
            true,
        )?);
        let owner = params.owner.clone().unwrap_or_else(|| job_owner(&actor));
        let mut session = Session {
            writer: &mut w,
            actor: &actor,
            owner: &owner,
        };
        let root = inputs_root.as_deref();
        match t {
            Transition::Start { state } => {
                let start = Start {
                    state,
                    inputs_root: root,
                    ..Start::default()
                };
                session.start(&id, &start)?.running(&id)?.0
            }
            Transition::Complete { state, .. } => {
                session.complete(&id, state, Inputs::Hash { root, extra: &[] }, None)?
            }
            t => session.record(&id, &t, None)?,
        }
    };
    let report = Report::after_write(w.store(), &build, SystemTime::now())?.0;
    crate::session::deliver_after_write("out", &mut w, settings);
    Ok(json!({"version": version(&id, build.serial), "metadata": metadata(&report)}))
}

/// The lease holder for a put: the Concourse job build, so that a start and a complete
/// put by the same job build match.
fn job_owner(actor: &Actor) -> String {
    let c = &actor.context;
    match (
        c.get("BUILD_PIPELINE_NAME"),
        c.get("BUILD_JOB_NAME"),
        c.get("BUILD_NAME"),
    ) {
        (Some(p), Some(j), Some(n)) => format!("concourse:{p}/{j}#{n}"),
        _ => c.get("BUILD_ID").map_or_else(
            || format!("{}@{}", actor.user, actor.host),
            |b| format!("concourse:build-{b}"),
        ),
    }
}
