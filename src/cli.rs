//! What every binary shares: the common flags, where the database lives by default,
//! and how results and errors are printed and turned into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::remote::{Remote, RemoteOptions};
use crate::store::{busy_timeout_from_env, default_db_path, Store};
use crate::sync::Writer;
use crate::{exit, Error, Result};

/// Flags every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The SQLite database [default: $XDG_STATE_HOME/buildstate/buildstate.db,
    /// or ~/.local/state/buildstate/buildstate.db]
    #[arg(long, value_name = "PATH", env = "BUILDSTATE_DB", global = true)]
    pub db: Option<PathBuf>,

    /// Print JSON on stdout instead of text (errors too, as {"error": {...}})
    #[arg(long, global = true)]
    pub json: bool,

    /// Remote mode: every write pulls the build from this remote and pushes it back with
    /// compare-and-swap; reads pull first (s3://, az://, gs://, file:///; docs/sync.md)
    #[arg(long, value_name = "URL", env = "BUILDSTATE_REMOTE", global = true)]
    pub remote: Option<String>,
}

impl Common {
    pub fn db_path(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(default_db_path)
    }

    /// Open the database, creating it if needed: init-state only.
    pub fn create(&self) -> Result<Store> {
        Store::open_with(&self.db_path(), busy_timeout_from_env()?)
    }

    /// The remote named by --remote / BUILDSTATE_REMOTE, if any.
    pub fn open_remote(&self) -> Result<Option<Remote>> {
        self.remote
            .as_deref()
            .map(|url| Remote::open(url, RemoteOptions::from_env()?))
            .transpose()
    }

    /// The store and, in remote mode, the remote its writes go through. In remote mode
    /// the local database is a cache of the remote and is created when missing; without
    /// a remote it must exist (see [`Common::open`]). `create`: init-state's right to
    /// create a database in local mode.
    pub fn writer(&self, create: bool) -> Result<Writer> {
        let remote = self.open_remote()?;
        let store = if create || remote.is_some() {
            self.create()?
        } else {
            self.open()?
        };
        Ok(Writer::new(store, remote))
    }

    /// Open an existing database. A missing file is an error (exit 9): a mistyped
    /// `--db` must neither read as "no such build, start it" nor leave a new file behind.
    pub fn open(&self) -> Result<Store> {
        Store::open_existing(&self.db_path(), busy_timeout_from_env()?)
    }
}

/// Parse the command line. Usage errors follow `--json` like every other error: with
/// it, stdout carries `{"error": {"kind": "usage", ...}}`; the message goes to stderr and
/// the exit code is 2. `--help` and `--version` print as usual.
pub fn parse<T: clap::Parser>(tool: &str) -> std::result::Result<T, ExitCode> {
    match T::try_parse() {
        Ok(args) => Ok(args),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                let code = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    exit::USAGE
                } else {
                    exit::OK
                };
                return Err(ExitCode::from(code as u8));
            }
            let json = std::env::args_os()
                .skip(1)
                .take_while(|a| a != "--")
                .any(|a| a == "--json");
            // clap quotes the offending argument, which may be a secret typed in the
            // wrong place.
            let message = crate::redact::redact(&e.render().to_string()).into_owned();
            if json {
                let first = message
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ")
                    .to_string();
                let body = serde_json::json!({
                    "error": {"kind": "usage", "message": first, "exit_code": exit::USAGE}
                });
                println!("{body}");
            }
            eprint!("{tool}: {message}");
            Err(ExitCode::from(exit::USAGE as u8))
        }
    }
}

/// Print an outcome and return the process exit code. `Ok(code)` has already printed its
/// output; an error is printed here, on stderr, and as JSON on stdout with `--json`.
pub fn finish(tool: &str, json: bool, result: Result<i32>) -> ExitCode {
    let code = match result {
        Ok(code) => code,
        Err(e) => report_error(tool, json, &e),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn report_error(tool: &str, json: bool, e: &Error) -> i32 {
    let code = e.exit_code();
    if json {
        let body = serde_json::json!({
            "error": {"kind": e.kind(), "message": e.to_string(), "exit_code": code}
        });
        println!("{body}");
    }
    eprintln!("{tool}: error: {e}");
    code
}

pub use crate::notify::slack::deliver_after_write;
