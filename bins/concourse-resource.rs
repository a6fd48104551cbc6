//! `concourse-resource`: its arguments and what it does are `buildstate::commands::concourse_resource`; the same
//! command is in the one executable, `buildstate` (bins/buildstate.rs).

fn main() -> std::process::ExitCode {
    buildstate::commands::concourse_resource::main()
}
