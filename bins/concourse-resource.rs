//! The buildstate Concourse resource: installed as /opt/resource/check, in and out (the
//! same binary; it looks at the name it was run as), or run as
//! `concourse-resource check|in|out [DIR]`. Logic: buildstate::concourse.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use buildstate::concourse::{check, fetch, put, Request};
use buildstate::{Error, Result};

fn run() -> Result<serde_json::Value> {
    let mut args: Vec<String> = std::env::args().collect();
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
}

fn main() -> ExitCode {
    // stdout carries only the answer; everything for people went to stderr.
    match run().and_then(|answer| buildstate::cli::outln(format_args!("{answer}"))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\x1b[31merror:\x1b[0m {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
