//! `run-state`: its arguments and what it does are `buildstate::commands::run_state`; the same
//! command is in the one executable, `buildstate` (bins/buildstate.rs).

fn main() -> std::process::ExitCode {
    buildstate::commands::run_state::main()
}
