//! buildstate: a durable, resumable record of where an image build is.
//!
//! A *build* walks through the numbered *states* of a [`plan::Plan`]. Every change is an
//! [`model::Event`] appended to a log that is never rewritten, and the build's summary row
//! is derived from it inside the same SQLite transaction ([`store::Store`]). The pure
//! function [`decide::decide`] tells a pipeline what to do next.
//!
//! The tree shows the layers; a layer imports only those below it (tests/it/layers.rs):
//! - [`domain`]: pure decisions and formats (plan, policy, model, decide, alerts,
//!   manifest, snapshot), no I/O beyond reading the clock: compiled as its own crate,
//!   `buildstate-core` (core/), with the error type and exit codes, and re-exported
//!   here under the same paths;
//! - [`store`]: the SQLite database;
//! - [`share`]: the remote (object storage) and writing through it;
//! - [`notify`]: delivering alerts (Slack);
//! - [`app`]: what the commands do (run, verify, hash inputs, monitor, report, the
//!   Concourse resource, the command-line glue).
//!
//! The binaries in `bins/` are thin: they parse arguments, call this crate, and map the
//! result to an exit code from [`exit`]. All logic lives here so that the binaries, the
//! Python module and the Ansible callback agree by construction.

#[cfg(all(feature = "fail-points", not(debug_assertions)))]
compile_error!("the fail-points feature (test hooks) is for debug test builds only");

pub mod app;
pub mod notify;
pub mod share;
pub mod store;

// Every module by its short name too (`buildstate::plan`, `crate::store`), as the
// binaries, the Python extension and the docs name them; the folders above are the
// layers, lowest first: domain, store, share, notify, app (README "Layout").
pub use app::{
    archive, concourse, environment, files, gc, inputs, monitor, parents, procs, report, reuse,
    runner, session, stats, timeline, verify,
};
#[cfg(feature = "cli")]
pub use app::{cli, commands};
pub use buildstate_core::{domain, error, exit};
pub use domain::{
    alerts, context, decide, deps, manifest, model, outputs, plan, policy, redact, resources,
    settings, snapshot, time,
};
pub use error::{Error, Result};
pub use share::{remote, sync};
