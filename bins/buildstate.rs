//! buildstate: every command in one executable, as git's builtins and busybox are.
//! Installed under each command's name (links to it, by `scripts/install`), it runs the
//! command it was called as; `buildstate COMMAND ARGS...` runs COMMAND. One executable
//! is one link-time optimised build instead of seven, and one file on disk
//! (docs/decisions.md).

use std::process::ExitCode;

use buildstate::commands::{
    check_state, concourse_resource, init_state, monitor, run_state, sync_cloud, update_state,
};

/// A command's entry point.
type Main = fn() -> ExitCode;

/// The commands, by the names they are installed as.
const COMMANDS: [(&str, Main); 7] = [
    ("init-state", init_state::main),
    ("check-state", check_state::main),
    ("update-state", update_state::main),
    ("run-state", run_state::main),
    ("sync-cloud", sync_cloud::main),
    ("monitor", monitor::main),
    ("concourse-resource", concourse_resource::main),
];

fn command(name: &str) -> Option<Main> {
    // The Concourse resource is installed as /opt/resource/{check,in,out}.
    let name = match name {
        "check" | "in" | "out" => "concourse-resource",
        other => other,
    };
    COMMANDS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

const USAGE: &str = "\
buildstate: every buildstate command in one executable.

Usage: buildstate COMMAND [ARGS...]   (or run it under a command's name: a link named
       check-state runs check-state; scripts/install makes those links)

Commands: init-state, check-state, update-state, run-state, sync-cloud, monitor,
          concourse-resource. `buildstate COMMAND --help` describes each.
";

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let called = argv
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if let Some(run) = command(&called) {
        return run();
    }
    match argv.next().map(|a| a.to_string_lossy().into_owned()) {
        Some(name) if command(&name).is_some() => {
            buildstate::cli::shift_command_name();
            command(&name).map_or(ExitCode::from(2), |run| run())
        }
        Some(flag) if flag == "--help" || flag == "-h" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(flag) if flag == "--version" || flag == "-V" => {
            println!("buildstate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(flag) if flag == "--list" => {
            for (name, _) in COMMANDS {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "buildstate: error: {}\n\n{USAGE}",
                match other {
                    Some(name) => format!("unknown command '{}'", buildstate::redact::echo(&name)),
                    None => "no command given".to_string(),
                }
            );
            ExitCode::from(2)
        }
    }
}
