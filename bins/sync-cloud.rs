//! `sync-cloud`: its arguments and what it does are `buildstate::commands::sync_cloud`; the same
//! command is in the one executable, `buildstate` (bins/buildstate.rs).

fn main() -> std::process::ExitCode {
    buildstate::commands::sync_cloud::main()
}
