//! `init-state`: its arguments and what it does are `buildstate::commands::init_state`; the same
//! command is in the one executable, `buildstate` (bins/buildstate.rs).

fn main() -> std::process::ExitCode {
    buildstate::commands::init_state::main()
}
