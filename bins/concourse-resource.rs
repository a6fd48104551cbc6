//! The buildstate Concourse resource: installed as /opt/resource/check, in and out (the
//! same binary; it looks at the name it was run as), or run as
//! `concourse-resource check|in|out [DIR]`. Logic: buildstate::concourse.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use buildstate::concourse::{check, fetch, put, Request};
use buildstate::{Error, Result};

const HELP: &str = "\
The buildstate Concourse resource (docs/concourse.md).

Installed as /opt/resource/check, /opt/resource/in and /opt/resource/out, it is run by
Concourse with the request as JSON on stdin; or run it as:

  concourse-resource check          < request.json
  concourse-resource in DEST        < request.json
  concourse-resource out SRC        < request.json

stdout carries only the JSON answer; messages go to stderr. Exit codes: docs/exit-codes.md.
Options: --help (this text), --json (errors also as JSON on stdout).
";

/// The command line for `--generate` (completions, man page): the same as HELP says.
fn command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let json = || {
        Arg::new("json")
            .long("json")
            .action(ArgAction::SetTrue)
            .help("Errors also as JSON on stdout")
    };
    Command::new("concourse-resource")
        .version(env!("CARGO_PKG_VERSION"))
        .about("The buildstate Concourse resource: check, in and out, with the request as JSON on stdin")
        .long_about(HELP)
        .arg(json())
        .subcommand(Command::new("check").about("List new versions of the build (request on stdin)"))
        .subcommand(
            Command::new("in")
                .about("Fetch one version into DEST: decision.json, resume-metadata, snapshot.json, history.json")
                .arg(Arg::new("DEST").required(true).value_hint(clap::ValueHint::DirPath)),
        )
        .subcommand(
            Command::new("out")
                .about("Perform one transition through the remote; files named by params are in SRC")
                .arg(Arg::new("SRC").required(true).value_hint(clap::ValueHint::DirPath)),
        )
}

fn run() -> Result<Option<serde_json::Value>> {
    let mut args: Vec<String> = buildstate::cli::args()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Options never reach the steps: --help answers before stdin is read.
    if args.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        buildstate::cli::out(format_args!("{HELP}"))?;
        return Ok(None);
    }
    args.retain(|a| a != "--json");
    let called = PathBuf::from(args.first().cloned().unwrap_or_default());
    let name = called
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let step = if matches!(name.as_str(), "check" | "in" | "out") {
        args.remove(0);
        name
    } else {
        args.remove(0);
        if args.is_empty() {
            return Err(Error::InvalidInput(
                "usage: concourse-resource check|in DEST|out SRC, with the request on stdin (docs/concourse.md)".into(),
            ));
        }
        args.remove(0)
    };
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|source| Error::Io {
            path: "stdin".into(),
            source,
        })?;
    let req = Request::parse(&stdin)?;
    let dir = || {
        args.first()
            .map(PathBuf::from)
            .ok_or_else(|| Error::InvalidInput(format!("{step}: the folder argument is missing")))
    };
    match step.as_str() {
        "check" => check(&req),
        "in" => fetch(&req, &dir()?),
        "out" => put(&req, &dir()?),
        other => Err(Error::InvalidInput(format!(
            "unknown step '{other}': use check, in or out"
        ))),
    }
    .map(Some)
}

pub fn main() -> ExitCode {
    if let Some(code) = buildstate::cli::generate(command(), "concourse-resource") {
        return code;
    }
    let json = buildstate::cli::args()
        .iter()
        .skip(1)
        .any(|a| a == "--json");
    // stdout carries only the answer; everything for people went to stderr.
    let answered = run().and_then(|answer| match answer {
        Some(a) => buildstate::cli::outln(format_args!("{a}")),
        None => Ok(()),
    });
    match answered {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Colour only for a person at a terminal; Concourse's build log gets plain text.
            if std::io::stderr().is_terminal() {
                eprintln!("\x1b[31merror:\x1b[0m {e}");
            } else {
                eprintln!("error: {e}");
            }
            if json {
                let body = serde_json::json!({
                    "error": {"kind": e.kind(), "message": e.to_string(), "exit_code": e.exit_code()}
                });
                let _ = buildstate::cli::outln(format_args!("{body}"));
            }
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
