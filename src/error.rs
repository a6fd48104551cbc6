//! The crate's error type. Each variant maps to one exit code ([`Error::exit_code`]) and
//! its message says what was wrong and what to do about it.

use std::path::PathBuf;

use crate::exit;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "unknown build '{0}': create it first with `init-state {0} --cloud PROVIDER --image TYPE`"
    )]
    UnknownBuild(String),

    #[error("build '{build_id}' already exists with {field} {existing}, not {requested}: use a new build id, or repeat init-state with the original values{hint}")]
    Conflict {
        build_id: String,
        field: String,
        existing: String,
        requested: String,
        hint: &'static str,
    },

    /// A transition that the build's status does not allow. Nothing was written.
    #[error("{0}")]
    Refused(String),

    /// Another live worker holds the build's lease. Nothing was written.
    #[error("{0}")]
    Leased(String),

    /// A leased worker's write for an attempt that is no longer its own (its lease
    /// expired and was taken over, or the state moved on). Nothing was written.
    #[error("{0}")]
    Fenced(String),

    #[error("invalid plan {origin}: {message}")]
    InvalidPlan { origin: String, message: String },

    #[error("{0}")]
    InvalidInput(String),

    /// No database file where one was expected; only init-state creates one.
    #[error("no database at {path}: create it with `init-state BUILD_ID --cloud PROVIDER --image TYPE`, or fix --db / BUILDSTATE_DB", path = .0.display())]
    NoDatabase(PathBuf),

    /// The database is not one this version can use (newer schema, foreign file).
    #[error("database {path}: {message}", path = path.display())]
    Database { path: PathBuf, message: String },

    #[error("{}", sqlite_message(.0))]
    Sqlite(#[from] rusqlite::Error),

    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The build left this database for a remote's archive (`monitor archive`).
    #[error("{0}")]
    Archived(Box<ArchivedAt>),

    /// `monitor unarchive` of a build the remote's archive does not hold.
    #[error("remote {remote} has no archived build '{build_id}' (no {object}): check the build id and the remote it was archived to (`check-state {build_id}` on the database that archived it says where)")]
    NotArchived {
        build_id: String,
        remote: String,
        object: String,
    },

    /// The remote has no copy of the build.
    #[error("remote {remote} has no copy of build '{build_id}': push it from the database that has it (`sync-cloud push {build_id}`)")]
    NotOnRemote { build_id: String, remote: String },

    /// A snapshot that is not valid (truncated, altered, newer). Nothing was written.
    #[error("{0}")]
    InvalidSnapshot(String),

    /// The local and remote histories of a build diverged, or the remote copy is another
    /// build with the same id. Nothing was written.
    #[error("{0}")]
    Diverged(String),

    /// Compare-and-swap lost: the remote copy changed since this database last saw it.
    /// Nothing was overwritten.
    #[error("{0}")]
    RemoteChanged(String),

    /// The remote could not be used (unreachable, refused, timed out, bad URL or
    /// credentials). Local state is untouched.
    #[error("{0}")]
    Remote(String),

    /// An outcome could not reach the remote within its lease and is journaled on this
    /// machine: it lands with the next command here in remote mode.
    #[error("{0}")]
    Journaled(String),

    /// Printing the output failed (a full disk, a closed file). Output is printed after
    /// the work it reports, so that work is done.
    #[error("could not write the output to stdout ({0}); what was asked was done (any write it made is recorded): see `check-state BUILD_ID`")]
    Output(String),

    /// Remote mode: this machine's clock is too far from the remote's
    /// (`BUILDSTATE_MAX_CLOCK_SKEW`). Nothing was written.
    #[error("{0}")]
    ClockSkew(String),

    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

fn sqlite_message(e: &rusqlite::Error) -> String {
    if let rusqlite::Error::SqliteFailure(f, _) = e {
        if matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        ) {
            return "database is locked by another writer for longer than the busy timeout: \
                    try again, or raise BUILDSTATE_BUSY_TIMEOUT (milliseconds)"
                .to_string();
        }
        if matches!(
            f.code,
            rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::PermissionDenied
        ) {
            return format!("{e}: check that the path exists and is writable, or pass --db");
        }
        if matches!(f.code, rusqlite::ErrorCode::NotADatabase) {
            return format!("{e}: the file is not a buildstate database; pass another --db");
        }
        let todo = match f.code {
            rusqlite::ErrorCode::DiskFull => {
                Some("free space on the file system that holds the database")
            }
            rusqlite::ErrorCode::SystemIoFailure => {
                Some("check the disk and file system that hold the database")
            }
            _ => None,
        };
        if let Some(todo) = todo {
            return format!(
                "database error: {e}: nothing was recorded (the transaction was rolled back); \
                 {todo}, then run the command again"
            );
        }
    }
    format!("database error: {e}")
}

impl Error {
    /// SQLite said another connection holds a lock we need.
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }

    /// The exit code documented for this kind of error in `docs/exit-codes.md`.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::UnknownBuild(_)
            | Error::NotOnRemote { .. }
            | Error::Archived(_)
            | Error::NotArchived { .. } => exit::UNKNOWN_BUILD,
            Error::Conflict { .. } => exit::CONFLICT,
            Error::Refused(_) => exit::REFUSED,
            Error::Leased(_) => exit::BUSY,
            Error::Fenced(_) => exit::LEASE_LOST,
            Error::InvalidPlan { .. } => exit::INVALID_PLAN,
            Error::InvalidInput(_) => exit::INVALID_INPUT,
            Error::NoDatabase(_) => exit::NO_DATABASE,
            Error::Database { .. } | Error::Sqlite(_) => exit::DATABASE,
            Error::RemoteChanged(_) => exit::REMOTE_CHANGED,
            Error::Diverged(_) => exit::DIVERGED,
            Error::Remote(_) => exit::REMOTE,
            Error::Journaled(_) => exit::JOURNALED,
            Error::InvalidSnapshot(_) => exit::INVALID_SNAPSHOT,
            Error::ClockSkew(_) => exit::CLOCK_SKEW,
            Error::Output(_) => exit::OUTPUT,
            Error::Io { .. } | Error::Corrupt(_) => exit::INTERNAL,
        }
    }

    /// A stable machine-readable name for `--json` error output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::UnknownBuild(_) | Error::NotOnRemote { .. } | Error::NotArchived { .. } => {
                "unknown_build"
            }
            Error::Archived(_) => "archived",
            Error::Conflict { .. } => "conflict",
            Error::Refused(_) => "refused",
            Error::Leased(_) => "leased",
            Error::Fenced(_) => "lease_lost",
            Error::InvalidPlan { .. } => "invalid_plan",
            Error::InvalidInput(_) => "invalid_input",
            Error::NoDatabase(_) => "no_database",
            Error::Database { .. } | Error::Sqlite(_) => "database",
            Error::RemoteChanged(_) => "remote_changed",
            Error::Diverged(_) => "diverged",
            Error::Remote(_) => "remote",
            Error::Journaled(_) => "journaled",
            Error::InvalidSnapshot(_) => "invalid_snapshot",
            Error::ClockSkew(_) => "clock_skew",
            Error::Output(_) => "output",
            Error::Io { .. } => "io",
            Error::Corrupt(_) => "corrupt",
        }
    }
}

/// Where an archived build went ([`Error::Archived`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedAt {
    pub build_id: String,
    pub serial: u64,
    pub status: String,
    pub remote: String,
    pub object: String,
    pub at: String,
}

impl std::fmt::Display for ArchivedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "build '{}' is archived: its snapshot (serial {}, {}) went to remote {} as {} at {}; bring it back with `monitor unarchive {} --remote {}`",
            self.build_id, self.serial, self.status, self.remote, self.object, self.at, self.build_id, self.remote
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real "database or disk is full" from SQLite (a page limit stands in for the
    /// disk): the message says nothing was recorded and what to do; exit 7.
    #[test]
    fn a_full_disk_says_nothing_was_recorded_and_what_to_do() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT); PRAGMA max_page_count = 2;")
            .unwrap();
        let big = "x".repeat(64 * 1024);
        let err: Error = conn
            .execute("INSERT INTO t (v) VALUES (?1)", [&big])
            .unwrap_err()
            .into();
        let msg = err.to_string();
        assert!(msg.contains("database or disk is full"), "{msg}");
        assert!(msg.contains("nothing was recorded"), "{msg}");
        assert!(msg.contains("free space"), "{msg}");
        assert_eq!(err.exit_code(), exit::DATABASE);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
    }
}
