//! `monitor`: its arguments and what it does are `buildstate::commands::monitor`; the same
//! command is in the one executable, `buildstate` (bins/buildstate.rs).

fn main() -> std::process::ExitCode {
    buildstate::commands::monitor::main()
}
