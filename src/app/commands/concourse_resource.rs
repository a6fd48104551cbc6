//! The buildstate Concourse resource: installed as /opt/resource/check, in and out (the
//! same binary; it looks at the name it was run as), or run as
//! `concourse-resource check|in|out [DIR]`. Logic: crate::concourse.

use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::concourse::{check, fetch, put, Request};
use crate::{Error, Result};

const HELP: &str = "\
The buildstate Concourse resource (docs/concourse.md).

Installed as /opt/resource/check, /opt/resource/in and /opt/resource/out, it is run by
Concourse with the request as JSON on stdin; or run it as:

  concourse-resource check          < request.json
  concourse-resource in DEST        < request.json
  concourse-resource out SRC        < request.json

stdout carries only the JSON answer; messages go to stderr. Exit codes: docs/exit-codes.md
(a mistyped step or option: 2, before stdin is read).";

/// The command line, checked before the request is read from stdin: a mistyped step or
/// option is a usage error (exit 2) at once, not after a request that never comes.
#[derive(clap::Parser)]
#[command(
    name = "concourse-resource",
    version,
    about = "The buildstate Concourse resource: check, in and out, with the request as JSON on stdin",
    long_about = HELP
)]
struct Args {
    /// Errors also as JSON on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    step: Step,
}

#[derive(clap::Subcommand)]
enum Step {
    /// List new versions of the build (request on stdin)
    Check,
    /// Fetch one version into DEST: decision.json, resume-metadata, snapshot.json, history.json,
    /// outputs.json
    In {
        #[arg(value_name = "DEST", value_hint = clap::ValueHint::DirPath)]
        dest: PathBuf,
    },
    /// Perform one transition through the remote; files named by params are in SRC
    Out {
        #[arg(value_name = "SRC", value_hint = clap::ValueHint::DirPath)]
        src: PathBuf,
    },
}

/// The arguments as the parser reads them: installed as /opt/resource/check (in, out),
/// the step is the name Concourse ran.
fn argv() -> Vec<OsString> {
    let mut args = crate::cli::args();
    let called = args.first().map(Path::new).and_then(Path::file_name);
    if let Some(step) = called.filter(|n| ["check", "in", "out"].iter().any(|s| n == s)) {
        args[0] = step.to_os_string();
        args.insert(0, "concourse-resource".into());
    }
    args
}

fn run(step: &Step) -> Result<serde_json::Value> {
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|source| Error::Io {
            path: "stdin".into(),
            source,
        })?;
    let req = Request::parse(&stdin)?;
    let settings = crate::cli::settings()?;
    match step {
        Step::Check => check(&req, settings),
        Step::In { dest } => fetch(&req, dest, settings),
        Step::Out { src } => put(&req, src, settings),
    }
}

pub fn main() -> ExitCode {
    let args: Args = match crate::cli::parse_from("concourse-resource", argv()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let json = args.json;
    // stdout carries only the answer; everything for people went to stderr.
    let answered = run(&args.step).and_then(|a| crate::cli::outln(format_args!("{a}")));
    match answered {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // What to do is said as a put's params, where the resource has the verb.
            let message = e.render(crate::error::Syntax::Concourse);
            // Colour only for a person at a terminal; Concourse's build log gets plain text.
            if std::io::stderr().is_terminal() {
                eprintln!("\x1b[31merror:\x1b[0m {message}");
            } else {
                eprintln!("error: {message}");
            }
            if json {
                let body = serde_json::json!({
                    "error": {"kind": e.kind(), "message": message, "exit_code": e.exit_code()}
                });
                let _ = crate::cli::outln(format_args!("{body}"));
            }
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
