//! The commands: each one's arguments (clap) and how it runs, over the library's
//! operations. Each executable in `bins/` is a `main` that calls one of these, and
//! `buildstate` (bins/buildstate.rs) runs any of them; the command-line glue they share
//! is `crate::cli`.

pub mod check_state;
pub mod concourse_resource;
pub mod init_state;
pub mod monitor;
pub mod run_state;
pub mod sync_cloud;
pub mod update_state;
