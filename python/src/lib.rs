//! `buildstate._native`: the state crate for Python. Glue only: every rule lives in the
//! crate. Results come back as plain dicts (the same JSON as the binaries' `--json`),
//! errors as exceptions named after the crate's error kinds, and the GIL is released
//! while the database is used.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use buildstate::context::Actor;
use buildstate::environment::Settings;
use buildstate::model::{InitRequest, TaskRecord, Transition};
use buildstate::policy::Category;
use buildstate::remote::Remote;
use buildstate::report::Report;
use buildstate::session::{Inputs, Open, Session, Start};
use buildstate::share::{LeaseKeeper, TaskRecorder};
use buildstate::sync::Writer;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

// Named in `buildstate`, where the package exports them: pickle finds a class by its
// module and name, so a worker process's UnknownBuildError reaches its caller as one
// (not a PicklingError), and tracebacks say `buildstate.UnknownBuildError`.
create_exception!(
    buildstate,
    BuildstateError,
    PyException,
    "Base class of every buildstate error; `exit_code` and `kind` match the binaries."
);
/// One exception class per error kind, made at import from the crate's table
/// (`buildstate::error::kind::ALL`), each a subclass of BuildstateError.
static CLASSES: PyOnceLock<Vec<(&'static str, Py<PyType>)>> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&Vec<(&'static str, Py<PyType>)>> {
    CLASSES.get_or_try_init(py, || {
        let base = py.get_type::<BuildstateError>();
        buildstate::error::kind::ALL
            .iter()
            .map(|k| {
                let name = CString::new(format!("buildstate.{}", k.python))
                    .expect("class names have no NUL");
                let doc = CString::new(k.doc).expect("docs have no NUL");
                Ok((
                    k.name,
                    PyErr::new_type(py, &name, Some(&doc), Some(&base), None)?,
                ))
            })
            .collect()
    })
}

fn to_py(py: Python<'_>, e: buildstate::Error) -> PyErr {
    // A refusal says what to do in Python where the Store has the verb.
    let msg = e.render(buildstate::error::Syntax::Python);
    let class = classes(py)
        .ok()
        .and_then(|c| c.iter().find(|(name, _)| *name == e.kind()))
        .map(|(_, class)| class.bind(py).clone());
    let err = match class {
        Some(class) => PyErr::from_type(class, msg),
        None => BuildstateError::new_err(msg),
    };
    let value = err.value(py);
    let _ = value.setattr("exit_code", e.exit_code());
    let _ = value.setattr("kind", e.kind());
    err
}

fn json_to_py(py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

fn category(py: Python<'_>, name: Option<&str>) -> PyResult<Option<Category>> {
    name.map(Category::parse_input)
        .transpose()
        .map_err(|e| to_py(py, e))
}

/// A state this Store started and has not finished: the fencing token its finishing
/// write carries, and the thread that keeps its lease alive meanwhile.
struct Held {
    state: u8,
    attempt: u32,
    _keeper: LeaseKeeper,
}

/// A buildstate database. Each method is one transaction.
#[pyclass(frozen, module = "buildstate._native")]
struct Store {
    inner: Mutex<Writer>,
    actor: Mutex<Actor>,
    path: PathBuf,
    busy_timeout: Duration,
    /// This Store's name as a lease holder: unique per process and Store.
    owner: String,
    /// Started on the first `task()`: writes task results off the caller's path.
    recorder: Mutex<Option<TaskRecorder>>,
    /// A task-write error met while flushing before a transition: the transition goes
    /// ahead (a lost task result must not lose the state's outcome); `flush()` raises it.
    task_error: Mutex<Option<buildstate::Error>>,
    /// Leases held by states this Store started, by build id.
    held: Mutex<HashMap<String, Held>>,
}

impl Store {
    /// Write queued task results, so that what follows keeps the history's order. An
    /// error is kept for `flush()` rather than stopping the caller's transition.
    fn flush_tasks_before_transition(&self) {
        if let Some(r) = self.recorder.lock().expect("recorder lock").as_ref() {
            if let Err(e) = r.flush() {
                self.task_error
                    .lock()
                    .expect("task error lock")
                    .get_or_insert(e);
            }
        }
    }

    /// One write through the session, after the queued task results: the build as
    /// written and its report as JSON (what `check-state --json` prints). Called with the
    /// GIL released.
    fn write(
        &self,
        f: impl FnOnce(&mut Session<'_>) -> buildstate::Result<buildstate::model::Build>,
    ) -> buildstate::Result<(buildstate::model::Build, String)> {
        self.flush_tasks_before_transition();
        let actor = self.actor.lock().expect("actor lock").clone();
        let mut store = self.inner.lock().expect("store lock");
        let build = f(&mut Session {
            writer: &mut store,
            actor: &actor,
            owner: &self.owner,
        })?;
        let now = std::time::SystemTime::now();
        let report = Report::after_write(store.store(), &build, now)?.0.to_json();
        Ok((build, report))
    }

    /// Finish or otherwise move a build with the GIL released, and return its report as
    /// a dict. Finishing (`state`: complete, fail, interrupt) a state this Store started
    /// carries its fencing token.
    fn apply(
        &self,
        py: Python<'_>,
        build_id: &str,
        finishing: Option<u8>,
        f: impl FnOnce(&mut Session<'_>, Option<u32>) -> buildstate::Result<buildstate::model::Build>
            + Send,
    ) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            let held = finishing.and_then(|state| {
                let mut held = self.held.lock().expect("held lock");
                match held.get(build_id) {
                    Some(h) if h.state == state => held.remove(build_id),
                    _ => None,
                }
            });
            let fence = held.as_ref().map(|h| h.attempt);
            match self.write(|session| f(session, fence)) {
                Ok((_, report)) => Ok(report),
                Err(e) => {
                    // Keep the lease for another try, unless it is gone for good.
                    if let (Some(h), false) = (held, matches!(e, buildstate::Error::Fenced(_))) {
                        self.held
                            .lock()
                            .expect("held lock")
                            .insert(build_id.to_string(), h);
                    }
                    Err(e)
                }
            }
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// The build's report as `decide` gives it.
    fn report(
        &self,
        build_id: &str,
        inputs: bool,
        inputs_root: Option<&std::path::Path>,
    ) -> buildstate::Result<Report> {
        self.flush_tasks_before_transition();
        let mut store = self.inner.lock().expect("store lock");
        store.refresh(build_id)?;
        let now = std::time::SystemTime::now();
        let mut report = Report::load(
            Some(store.store()),
            build_id,
            &buildstate::files::plan_from_env()?,
            now,
            false,
        )?;
        if let (Some(b), true) = (store.store().build(build_id)?, inputs) {
            let plan = store.store().plan(&b.plan_hash)?;
            let stale = buildstate::inputs::stale_of(&mut store, &b, &plan, inputs_root, false)?;
            report = report.with_stale(&b, &plan, now, stale);
        }
        if let Some(b) = store.store().build(build_id)? {
            let plan = store.store().plan(&b.plan_hash)?;
            report = report.with_parents(&mut store, &b, &plan)?;
        }
        Ok(report.in_syntax(buildstate::error::Syntax::Python))
    }

    /// The fencing token of a write about `state` (default: whichever this Store holds):
    /// the attempt this Store started, while it holds that state's lease.
    fn fence_for(&self, build_id: &str, state: Option<u8>) -> Option<u32> {
        self.held
            .lock()
            .expect("held lock")
            .get(build_id)
            .filter(|h| state.is_none_or(|s| s == h.state))
            .map(|h| h.attempt)
    }

    /// A read of `build_id` as it is now (queued task results written, refreshed from the
    /// remote in remote mode): `f`'s JSON as Python values; `UnknownBuildError` when the
    /// build does not exist.
    fn read_existing(
        &self,
        py: Python<'_>,
        build_id: &str,
        f: impl FnOnce(&mut buildstate::sync::Writer) -> buildstate::Result<String> + Send,
    ) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            self.flush_tasks_before_transition();
            let mut store = self.inner.lock().expect("store lock");
            store.refresh(build_id)?;
            if store.store().build(build_id)?.is_none() {
                return Err(buildstate::Error::UnknownBuild(build_id.to_string()));
            }
            f(&mut store)
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// A transition that needs nothing of the session but its owner and fencing token.
    fn record(&self, py: Python<'_>, build_id: &str, t: Transition) -> PyResult<Py<PyAny>> {
        let finishing = match &t {
            Transition::Fail { state, .. } | Transition::Interrupt { state, .. } => Some(*state),
            _ => None,
        };
        self.apply(py, build_id, finishing, |session, fence| {
            session.record(build_id, &t, fence)
        })
    }
}

#[pymethods]
impl Store {
    /// Open the database at `path` (default: BUILDSTATE_DB, else the binaries' default).
    /// With `create=False` a missing file is an error instead of a new database.
    /// `busy_timeout_ms` (default: BUILDSTATE_BUSY_TIMEOUT, else 60000): how long a
    /// write waits for another writer's lock.
    /// `remote` (default: BUILDSTATE_REMOTE) turns on remote mode: every write goes
    /// through the remote with compare-and-swap, reads pull first (docs/sync.md).
    #[new]
    #[pyo3(signature = (path=None, *, create=true, busy_timeout_ms=None, tool="python", remote=None))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        create: bool,
        busy_timeout_ms: Option<u64>,
        tool: &str,
        remote: Option<String>,
    ) -> PyResult<Store> {
        let path = buildstate::environment::db_path(path);
        let remote = remote.or_else(|| {
            std::env::var("BUILDSTATE_REMOTE")
                .ok()
                .filter(|v| !v.is_empty())
        });
        // Resolved and checked now, before anything is opened, as the commands do.
        let settings = Settings::from_env().map_err(|e| to_py(py, e))?;
        if busy_timeout_ms.is_some_and(|ms| ms > buildstate::store::MAX_BUSY_TIMEOUT_MS) {
            return Err(to_py(
                py,
                buildstate::Error::InvalidInput(format!(
                    "busy_timeout_ms: give at most {} (an hour)",
                    buildstate::store::MAX_BUSY_TIMEOUT_MS
                )),
            ));
        }
        let timeout = busy_timeout_ms.map_or(settings.busy_timeout, Duration::from_millis);
        let store = py
            .detach(|| -> buildstate::Result<Writer> {
                let remote = remote
                    .as_deref()
                    .map(|url| Remote::open(url, settings.remote.clone()))
                    .transpose()?;
                buildstate::session::open(Open {
                    db: path.clone(),
                    remote,
                    busy_timeout: timeout,
                    create,
                    tool: "buildstate",
                })
            })
            .map_err(|e| to_py(py, e))?;
        let actor = buildstate::environment::actor(tool);
        let owner = actor.lease_owner();
        Ok(Store {
            inner: Mutex::new(store),
            actor: Mutex::new(actor),
            path,
            busy_timeout: timeout,
            owner,
            recorder: Mutex::new(None),
            task_error: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The database file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Add pipeline context (playbook, play, ...) recorded with every later event.
    fn set_context(&self, context: BTreeMap<String, String>) {
        let mut actor = self.actor.lock().expect("actor lock");
        for (k, v) in context {
            *actor = actor.clone().with_context(&k, &v);
        }
    }

    /// Create a build, or confirm an identical one. Returns the report with `created`.
    /// `after`: other builds' states (BUILD:STATE) every state of it waits for, as
    /// `init-state --after` (docs/plan.md#dependencies). `reuse_from`: an identical build
    /// whose leading states a new build reuses, as `init-state --reuse-from` (its inputs
    /// hashed under `inputs_root`, default BUILDSTATE_INPUTS_ROOT or the working
    /// directory); the report's `reuse` says which.
    #[pyo3(signature = (build_id, cloud, image, *, plan=None, meta=None, after=None, reuse_from=None, inputs_root=None))]
    #[allow(clippy::too_many_arguments)]
    fn init(
        &self,
        py: Python<'_>,
        build_id: &str,
        cloud: &str,
        image: &str,
        plan: Option<PathBuf>,
        meta: Option<BTreeMap<String, String>>,
        after: Option<Vec<String>>,
        reuse_from: Option<String>,
        inputs_root: Option<PathBuf>,
    ) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            let plan = match &plan {
                Some(p) => buildstate::files::plan_file(p)?,
                None => buildstate::files::plan_from_env()?,
            };
            let req = InitRequest {
                build_id: build_id.to_string(),
                cloud: cloud.to_string(),
                image: image.to_string(),
                plan,
                meta: meta.unwrap_or_default().into_iter().collect(),
                after: after.unwrap_or_default(),
            };
            let actor = self.actor.lock().expect("actor lock").clone();
            let mut store = self.inner.lock().expect("store lock");
            let now = std::time::SystemTime::now();
            let (outcome, reused) = match &reuse_from {
                Some(from) => buildstate::session::init_reusing(
                    &mut store,
                    &req,
                    &actor,
                    now,
                    from,
                    inputs_root.as_deref(),
                )?,
                None => (
                    buildstate::session::init(&mut store, &req, &actor, now)?,
                    None,
                ),
            };
            let (mut report, _) = Report::after_write(store.store(), &outcome.build, now)?;
            report.created = Some(outcome.created);
            report.reuse = reused;
            Ok(report.to_json())
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// Record that `state` started, holding the build's lease: a thread renews it every
    /// third of `lease_ttl_ms` until this Store completes, fails or interrupts the state.
    /// If this process dies, the lease runs out and another worker may take over; a
    /// finishing write after that raises LeaseLostError and records nothing.
    ///
    /// A completed state starts again only when it is stale (its inputs under
    /// `inputs_root`, default BUILDSTATE_INPUTS_ROOT or the working directory, changed,
    /// or its verify failed): the rerun is recorded first.
    #[pyo3(signature = (build_id, state, *, lease_ttl_ms=60_000, inputs_root=None))]
    fn start(
        &self,
        py: Python<'_>,
        build_id: &str,
        state: u8,
        lease_ttl_ms: u64,
        inputs_root: Option<PathBuf>,
    ) -> PyResult<Py<PyAny>> {
        let ttl = Duration::from_millis(lease_ttl_ms);
        if ttl < Duration::from_millis(300) || ttl > buildstate::time::MAX_DURATION {
            return Err(to_py(py, buildstate::Error::InvalidInput(
                "lease_ttl_ms: give from 300 ms (so that the lease can be renewed in time) to 366 days".into(),
            )));
        }
        let result = py.detach(|| -> buildstate::Result<String> {
            let start = Start {
                state,
                lease_ttl: Some(ttl),
                renewed: true,
                inputs_root: inputs_root.as_deref(),
                ..Start::default()
            };
            let mut ttl = ttl;
            let (build, report) = self.write(|session| {
                let (build, taken) = session.start(build_id, &start)?.running(build_id)?;
                ttl = taken;
                Ok(build)
            })?;
            let keeper = {
                let w = self.inner.lock().expect("store lock");
                LeaseKeeper::start(
                    &self.path,
                    w.remote(),
                    build_id,
                    &self.owner,
                    build.attempt,
                    ttl,
                )?
            };
            self.held.lock().expect("held lock").insert(
                build_id.to_string(),
                Held {
                    state,
                    attempt: build.attempt,
                    _keeper: keeper,
                },
            );
            Ok(report)
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// This Store's name as a lease holder (recorded as the build's lease_owner).
    #[getter]
    fn owner(&self) -> String {
        self.owner.clone()
    }

    /// Record that `state` completed, with the SHA-256 of its inputs: those the plan
    /// declares plus the files matching `inputs` (globs relative to `inputs_root`, default
    /// BUILDSTATE_INPUTS_ROOT or the working directory), such as the roles a play loaded.
    #[pyo3(signature = (build_id, state, *, inputs=None, inputs_root=None))]
    fn complete(
        &self,
        py: Python<'_>,
        build_id: &str,
        state: u8,
        inputs: Option<Vec<String>>,
        inputs_root: Option<PathBuf>,
    ) -> PyResult<Py<PyAny>> {
        let extra = inputs.unwrap_or_default();
        self.apply(py, build_id, Some(state), |session, fence| {
            let inputs = Inputs::Hash {
                root: inputs_root.as_deref(),
                extra: &extra,
            };
            session.complete(build_id, state, inputs, fence)
        })
    }

    /// Mark `state` and every later state to run again (`state=None`: every state), as
    /// `update-state force`; `reason` is recorded with who did it.
    #[pyo3(signature = (build_id, state=None, *, reason))]
    fn force(
        &self,
        py: Python<'_>,
        build_id: &str,
        state: Option<u8>,
        reason: &str,
    ) -> PyResult<Py<PyAny>> {
        let t = Transition::Reopen {
            from: state,
            reason: reason.to_string(),
            why: buildstate::model::Reopen::Force,
        };
        self.record(py, build_id, t)
    }

    /// Start the build over in a new epoch, as `update-state reset`.
    #[pyo3(signature = (build_id, *, reason))]
    fn reset(&self, py: Python<'_>, build_id: &str, reason: &str) -> PyResult<Py<PyAny>> {
        let t = Transition::Reopen {
            from: None,
            reason: reason.to_string(),
            why: buildstate::model::Reopen::Reset,
        };
        self.record(py, build_id, t)
    }

    /// Record that `state` failed; the category is classified when not given.
    #[pyo3(signature = (build_id, state, message, *, category=None, exit_code=None))]
    fn fail(
        &self,
        py: Python<'_>,
        build_id: &str,
        state: u8,
        message: &str,
        category: Option<&str>,
        exit_code: Option<i32>,
    ) -> PyResult<Py<PyAny>> {
        let t = Transition::Fail {
            state,
            message: message.to_string(),
            category: self::category(py, category)?,
            exit_code,
            signal: None,
            timed_out: false,
        };
        self.record(py, build_id, t)
    }

    /// Record that the running `state` was interrupted (by `signal`, e.g. "SIGINT").
    fn interrupt(
        &self,
        py: Python<'_>,
        build_id: &str,
        state: u8,
        signal: &str,
    ) -> PyResult<Py<PyAny>> {
        let t = Transition::Interrupt {
            state,
            signal: signal.to_string(),
        };
        self.record(py, build_id, t)
    }

    /// Withdraw the build's current outputs (a bad image), as `update-state revoke`:
    /// builds that consumed them become stale and are alerted (docs/plan.md#dependencies).
    fn revoke(&self, py: Python<'_>, build_id: &str, reason: &str) -> PyResult<Py<PyAny>> {
        let t = Transition::Revoke {
            reason: reason.to_string(),
        };
        self.record(py, build_id, t)
    }

    /// Set metadata.
    fn meta(
        &self,
        py: Python<'_>,
        build_id: &str,
        pairs: BTreeMap<String, String>,
    ) -> PyResult<Py<PyAny>> {
        let t = Transition::Meta {
            pairs: pairs.into_iter().collect(),
        };
        self.record(py, build_id, t)
    }

    /// Record one task result on one host (history only; the build does not change).
    /// Queued and written in batches by a background thread: it returns at once. Errors
    /// of an earlier write are raised here or by `flush()`; transitions and reads flush
    /// first.
    #[pyo3(signature = (build_id, task, host, status, *, state=None, duration_ms=None, message=None))]
    #[allow(clippy::too_many_arguments)]
    fn task(
        &self,
        py: Python<'_>,
        build_id: &str,
        task: &str,
        host: &str,
        status: &str,
        state: Option<u8>,
        duration_ms: Option<u64>,
        message: Option<String>,
    ) -> PyResult<()> {
        let record = TaskRecord {
            state,
            task: task.to_string(),
            host: host.to_string(),
            status: status.to_string(),
            duration_ms,
            message,
            at: std::time::SystemTime::now(),
        };
        let result = py.detach(|| -> buildstate::Result<()> {
            let mut recorder = self.recorder.lock().expect("recorder lock");
            if recorder.is_none() {
                let w = self.inner.lock().expect("store lock");
                *recorder = Some(TaskRecorder::start(
                    &self.path,
                    w.remote(),
                    self.busy_timeout,
                )?);
            }
            let actor = self.actor.lock().expect("actor lock").clone();
            recorder
                .as_ref()
                .expect("started above")
                .record(build_id, record, &actor)
        });
        result.map_err(|e| to_py(py, e))
    }

    /// Wait until every queued task result is written. Raises the first task-write
    /// error since the last call, including one met while flushing before a transition.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| -> buildstate::Result<()> {
            self.flush_tasks_before_transition();
            match self.task_error.lock().expect("task error lock").take() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
        .map_err(|e| to_py(py, e))
    }

    /// The build's report with the decision: what check-state --json prints. An unknown
    /// build gives `{"exists": false, "decision": "start", ...}`. Stale states (changed
    /// inputs under `inputs_root`) make it `rerun`, unless `inputs=False`.
    #[pyo3(signature = (build_id, *, inputs=true, inputs_root=None))]
    fn decide(
        &self,
        py: Python<'_>,
        build_id: &str,
        inputs: bool,
        inputs_root: Option<PathBuf>,
    ) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            Ok(self
                .report(build_id, inputs, inputs_root.as_deref())?
                .to_json())
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// What a play (or a task) about to run `state` should do: `{"done": bool, "report":
    /// ...}`. Done: the build is completed, or the state is at or before the current one
    /// and not running, and not stale (as `decide`, with `inputs`); else start it (the
    /// start records a rerun first). The callback and the state module ask this instead
    /// of deciding themselves.
    #[pyo3(signature = (build_id, state, *, inputs_root=None, inputs=true))]
    fn state_done(
        &self,
        py: Python<'_>,
        build_id: &str,
        state: u8,
        inputs_root: Option<PathBuf>,
        inputs: bool,
    ) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            let report = self.report(build_id, inputs, inputs_root.as_deref())?;
            let done = report.state_done(state);
            Ok(serde_json::json!({"done": done, "report": report}).to_string())
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// Record values `state` (default: the active one) produced (docs/outputs.md). A
    /// state this Store started is fenced with its attempt: if its lease was lost,
    /// nothing is written (`LeaseLostError`).
    #[pyo3(signature = (build_id, outputs, *, state=None))]
    fn output(
        &self,
        py: Python<'_>,
        build_id: &str,
        outputs: BTreeMap<String, String>,
        state: Option<u8>,
    ) -> PyResult<Py<PyAny>> {
        let fence = self.fence_for(build_id, state);
        let t = Transition::Output {
            state,
            pairs: outputs.into_iter().collect(),
            resources: Vec::new(),
        };
        let result = py.detach(|| {
            self.write(|session| session.record(build_id, &t, fence))
                .map(|(_, report)| report)
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// Record that `state` (default: the active one) created the resource `rtype`
    /// `id` (docs/resources.md), with its properties and the shell commands that
    /// delete it and check it is there. Fenced like `output`.
    #[pyo3(signature = (build_id, rtype, id, *, props=None, cleanup=None, check=None, state=None))]
    #[allow(clippy::too_many_arguments)]
    fn resource_add(
        &self,
        py: Python<'_>,
        build_id: &str,
        rtype: &str,
        id: &str,
        props: Option<BTreeMap<String, String>>,
        cleanup: Option<String>,
        check: Option<String>,
        state: Option<u8>,
    ) -> PyResult<Py<PyAny>> {
        let fence = self.fence_for(build_id, state);
        let t = Transition::Resource {
            state,
            op: buildstate::resources::Op::Add {
                rtype: rtype.to_string(),
                id: id.to_string(),
                props: props.unwrap_or_default(),
                cleanup,
                check,
            },
        };
        let result = py.detach(|| {
            self.write(|session| session.record(build_id, &t, fence))
                .map(|(_, report)| report)
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// Record that the resource `rtype` `id` is gone.
    fn resource_delete(
        &self,
        py: Python<'_>,
        build_id: &str,
        rtype: &str,
        id: &str,
    ) -> PyResult<Py<PyAny>> {
        let t = Transition::Resource {
            state: None,
            op: buildstate::resources::Op::Delete {
                rtype: rtype.to_string(),
                id: id.to_string(),
            },
        };
        self.record(py, build_id, t)
    }

    /// The build's resource ledger, as `check-state --resources --json` lists it
    /// (orphans judged with `older_than_s`, default a day, as `monitor gc`).
    #[pyo3(signature = (build_id, *, older_than_s=86_400))]
    fn resources(&self, py: Python<'_>, build_id: &str, older_than_s: u64) -> PyResult<Py<PyAny>> {
        self.read_existing(py, build_id, |store| {
            let now = store.now()?;
            let window = std::time::Duration::from_secs(older_than_s);
            let ledger = store.store().resources(build_id, now, window)?;
            Ok(serde_json::to_string(&ledger).expect("a ledger serializes"))
        })
    }

    /// The build's current outputs by key, as `check-state --json` gives them: each
    /// with its value, the state and attempt that recorded it, its event's seq and time.
    fn outputs(&self, py: Python<'_>, build_id: &str) -> PyResult<Py<PyAny>> {
        self.read_existing(py, build_id, |store| {
            let outputs = store.store().outputs(build_id)?;
            Ok(serde_json::to_string(&outputs).expect("outputs serialize"))
        })
    }

    /// The build's history, oldest first.
    fn events(&self, py: Python<'_>, build_id: &str) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            self.flush_tasks_before_transition();
            let store = self.inner.lock().expect("store lock");
            let events = store.store().events(build_id)?;
            Ok(serde_json::to_string(&events).expect("events serialize"))
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }
}

/// The database path the binaries use when neither --db nor BUILDSTATE_DB is given.
#[pyfunction]
fn default_db_path() -> PathBuf {
    buildstate::environment::default_db_path()
}

/// Return `text` with secrets replaced by [REDACTED], as stored messages are.
#[pyfunction]
fn redact(text: &str) -> String {
    buildstate::redact::redact(text).into_owned()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Store>()?;
    m.add_function(wrap_pyfunction!(default_db_path, m)?)?;
    m.add_function(wrap_pyfunction!(redact, m)?)?;
    m.add("BuildstateError", py.get_type::<BuildstateError>())?;
    for (k, (_, class)) in buildstate::error::kind::ALL.iter().zip(classes(py)?) {
        m.add(k.python, class.bind(py))?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
