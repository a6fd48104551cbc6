//! The integration tests, as one test executable (one link instead of one per file):
//! each module drives the real binaries as processes, as users and pipelines run them.

mod util;

mod archive;
mod cli;
mod compat;
mod completion;
mod concourse;
mod concurrency;
mod deps;
mod extreme;
mod fleet;
mod inputs;
mod journal;
mod layers;
mod outputs;
mod resources;
mod reuse;
mod run_state;
mod stats;
mod sync;
mod tls;
