//! What the commands do, on top of the lower layers: run a state under its retry policy
//! ([`runner`]), check recorded state against reality ([`verify`], [`inputs`]), watch
//! the fleet ([`monitor`], [`report`]), the Concourse resource ([`concourse`]) and the
//! command-line glue shared by the binaries.

pub mod archive;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod commands;
pub mod concourse;
pub mod environment;
pub mod files;
pub mod gc;
pub mod inputs;
pub mod monitor;
pub mod parents;
pub mod procs;
pub mod report;
pub mod reuse;
pub mod runner;
pub mod session;
pub mod stats;
pub mod timeline;
pub mod verify;
