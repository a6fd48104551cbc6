//! What every binary shares: the common flags, where the database lives by default,
//! and how results and errors are printed and turned into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::{busy_timeout_from_env, default_db_path, Store};
use crate::{Error, Result};

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
}

impl Common {
    pub fn db_path(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(default_db_path)
    }

    /// Open the database, creating it if needed.
    pub fn open(&self) -> Result<Store> {
        Store::open_with(&self.db_path(), busy_timeout_from_env()?)
    }

    /// Open the database only if it exists: checking a build must not create files.
    pub fn open_existing(&self) -> Result<Option<Store>> {
        let path = self.db_path();
        if path.exists() {
            Ok(Some(Store::open_with(&path, busy_timeout_from_env()?)?))
        } else {
            Ok(None)
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
