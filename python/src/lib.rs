//! `buildstate._native`: the state crate for Python. Glue only: every rule lives in the
//! crate. Results come back as plain dicts (the same JSON as the binaries' `--json`),
//! errors as exceptions named after the crate's error kinds, and the GIL is released
//! while the database is used.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use buildstate::context::Actor;
use buildstate::model::{Ctx, InitRequest, TaskRecord, Transition};
use buildstate::plan::Plan;
use buildstate::policy::Category;
use buildstate::report::Report;
use buildstate::store::{Store as CoreStore, TaskRecorder, DEFAULT_BUSY_TIMEOUT};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _native,
    BuildstateError,
    PyException,
    "Base class of every buildstate error; `exit_code` and `kind` match the binaries."
);
create_exception!(
    _native,
    UnknownBuildError,
    BuildstateError,
    "The build id is not in the database."
);
create_exception!(
    _native,
    ConflictError,
    BuildstateError,
    "The build exists with another identity."
);
create_exception!(
    _native,
    RefusedError,
    BuildstateError,
    "The transition is not allowed; nothing was written."
);
create_exception!(
    _native,
    LeasedError,
    BuildstateError,
    "Another live worker holds the build's lease."
);
create_exception!(
    _native,
    InvalidPlanError,
    BuildstateError,
    "The plan is invalid."
);
create_exception!(
    _native,
    InvalidInputError,
    BuildstateError,
    "An argument has a bad value."
);
create_exception!(
    _native,
    DatabaseError,
    BuildstateError,
    "The database cannot be used."
);

fn to_py(py: Python<'_>, e: buildstate::Error) -> PyErr {
    let msg = e.to_string();
    let err = match e.kind() {
        "unknown_build" => UnknownBuildError::new_err(msg),
        "conflict" => ConflictError::new_err(msg),
        "refused" => RefusedError::new_err(msg),
        "leased" => LeasedError::new_err(msg),
        "invalid_plan" => InvalidPlanError::new_err(msg),
        "invalid_input" => InvalidInputError::new_err(msg),
        "database" => DatabaseError::new_err(msg),
        _ => BuildstateError::new_err(msg),
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

/// A buildstate database. Each method is one transaction.
#[pyclass(frozen, module = "buildstate._native")]
struct Store {
    inner: Mutex<CoreStore>,
    actor: Mutex<Actor>,
    path: PathBuf,
    busy_timeout: Duration,
    /// Started on the first `task()`: writes task results off the caller's path.
    recorder: Mutex<Option<TaskRecorder>>,
}

impl Store {
    /// Write queued task results, so that what follows keeps the history's order.
    fn flush_tasks(&self) -> buildstate::Result<()> {
        match self.recorder.lock().expect("recorder lock").as_ref() {
            Some(r) => r.flush(),
            None => Ok(()),
        }
    }

    /// Apply a transition with the GIL released, and return the build's report as a dict.
    fn apply(&self, py: Python<'_>, build_id: &str, t: Transition) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            self.flush_tasks()?;
            let actor = self.actor.lock().expect("actor lock").clone();
            let mut store = self.inner.lock().expect("store lock");
            let ctx = Ctx::live();
            let build = store.transition(build_id, &t, &actor, &ctx)?;
            Ok(Report::after_write(&store, &build, ctx.now)?.0.to_json())
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }
}

#[pymethods]
impl Store {
    /// Open the database at `path` (default: BUILDSTATE_DB, else the binaries' default).
    /// With `create=False` a missing file is an error instead of a new database.
    #[new]
    #[pyo3(signature = (path=None, *, create=true, busy_timeout_ms=None, tool="python"))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        create: bool,
        busy_timeout_ms: Option<u64>,
        tool: &str,
    ) -> PyResult<Store> {
        let path = path
            .or_else(|| {
                std::env::var_os("BUILDSTATE_DB")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(buildstate::store::default_db_path);
        if !create && !path.exists() {
            return Err(to_py(
                py,
                buildstate::Error::Database {
                    path,
                    message: "no database here: create the build with init-state first, or point BUILDSTATE_DB at the right file".into(),
                },
            ));
        }
        let timeout = busy_timeout_ms.map_or(DEFAULT_BUSY_TIMEOUT, Duration::from_millis);
        let store = py
            .detach(|| CoreStore::open_with(&path, timeout))
            .map_err(|e| to_py(py, e))?;
        Ok(Store {
            inner: Mutex::new(store),
            actor: Mutex::new(Actor::from_env(tool)),
            path,
            busy_timeout: timeout,
            recorder: Mutex::new(None),
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
    #[pyo3(signature = (build_id, cloud, image, *, plan=None, meta=None))]
    fn init(
        &self,
        py: Python<'_>,
        build_id: &str,
        cloud: &str,
        image: &str,
        plan: Option<PathBuf>,
        meta: Option<BTreeMap<String, String>>,
    ) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            let plan = match &plan {
                Some(p) => Plan::from_file(p)?,
                None => Plan::from_env()?,
            };
            let req = InitRequest {
                build_id: build_id.to_string(),
                cloud: cloud.to_string(),
                image: image.to_string(),
                plan,
                meta: meta.unwrap_or_default().into_iter().collect(),
            };
            let actor = self.actor.lock().expect("actor lock").clone();
            let mut store = self.inner.lock().expect("store lock");
            let now = std::time::SystemTime::now();
            let outcome = store.init(&req, &actor, now)?;
            let (mut report, _) = Report::after_write(&store, &outcome.build, now)?;
            report.created = Some(outcome.created);
            Ok(report.to_json())
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// Record that `state` started.
    fn start(&self, py: Python<'_>, build_id: &str, state: u8) -> PyResult<Py<PyAny>> {
        self.apply(py, build_id, Transition::Start { state })
    }

    /// Record that `state` completed.
    fn complete(&self, py: Python<'_>, build_id: &str, state: u8) -> PyResult<Py<PyAny>> {
        self.apply(py, build_id, Transition::Complete { state })
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
        self.apply(py, build_id, t)
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
        self.apply(py, build_id, t)
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
        self.apply(py, build_id, t)
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
                *recorder = Some(TaskRecorder::start(&self.path, self.busy_timeout)?);
            }
            let actor = self.actor.lock().expect("actor lock").clone();
            recorder
                .as_ref()
                .expect("started above")
                .record(build_id, record, &actor)
        });
        result.map_err(|e| to_py(py, e))
    }

    /// Wait until every queued task result is written.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.flush_tasks()).map_err(|e| to_py(py, e))
    }

    /// The build's report with the decision: what check-state --json prints. An unknown
    /// build gives `{"exists": false, "decision": "start", ...}`.
    fn decide(&self, py: Python<'_>, build_id: &str) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            self.flush_tasks()?;
            let store = self.inner.lock().expect("store lock");
            let report = Report::load(
                Some(&store),
                build_id,
                &Plan::from_env()?,
                std::time::SystemTime::now(),
                false,
            )?;
            Ok(report.to_json())
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }

    /// The build's history, oldest first.
    fn events(&self, py: Python<'_>, build_id: &str) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| -> buildstate::Result<String> {
            self.flush_tasks()?;
            let store = self.inner.lock().expect("store lock");
            let events = store.events(build_id)?;
            Ok(serde_json::to_string(&events).expect("events serialize"))
        });
        let text = result.map_err(|e| to_py(py, e))?;
        json_to_py(py, &text)
    }
}

/// The database path the binaries use when neither --db nor BUILDSTATE_DB is given.
#[pyfunction]
fn default_db_path() -> PathBuf {
    buildstate::store::default_db_path()
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
    m.add("UnknownBuildError", py.get_type::<UnknownBuildError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("RefusedError", py.get_type::<RefusedError>())?;
    m.add("LeasedError", py.get_type::<LeasedError>())?;
    m.add("InvalidPlanError", py.get_type::<InvalidPlanError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
