//! The crate's error type. Each variant maps to one exit code ([`Error::exit_code`]) and
//! its message says what was wrong and what to do about it.

use std::path::PathBuf;

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

    /// A transition that the build's status does not allow. Nothing was written. What
    /// a person can do about it is a [`Hint`], which each front end writes in its own
    /// syntax ([`Error::render`]).
    #[error("{0}")]
    Refused(Refusal),

    /// Another live worker holds the build's lease. Nothing was written.
    #[error("{0}")]
    Leased(Refusal),

    /// A person's decision (force, reset, skip, cancel ...) without the reason it is
    /// recorded with. Nothing was written. Of the invalid-input kind.
    #[error("{0}")]
    NeedsReason(Refusal),

    /// A leased worker's write for an attempt that is no longer its own (its lease
    /// expired and was taken over, or the state moved on). Nothing was written.
    #[error("{0}")]
    Fenced(String),

    /// A state's `requires` command did not pass: the build is blocked on it (that is
    /// recorded) and the state did not start.
    #[error("{0}")]
    Blocked(String),

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

    /// SQLite's error, as the store met it (converted from rusqlite's by the `sqlite`
    /// feature of buildstate-core).
    #[error("{0}")]
    Sqlite(SqliteError),

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

/// An error SQLite returned: what went wrong and what to do, whether it was a lock held
/// too long, and the error itself.
#[derive(Debug)]
pub struct SqliteError {
    message: String,
    busy: bool,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        let busy = matches!(&e, rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked));
        Error::Sqlite(SqliteError {
            message: sqlite_message(&e),
            busy,
            source: Box::new(e),
        })
    }
}

#[cfg(feature = "sqlite")]
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
        matches!(self, Error::Sqlite(e) if e.busy)
    }

    /// The message as the front end `syntax` shows it: a refusal's hints in its own
    /// syntax; any other error as it reads ([`std::fmt::Display`]).
    pub fn render(&self, syntax: Syntax) -> String {
        match self {
            Error::Refused(r) | Error::Leased(r) | Error::NeedsReason(r) => r.render(syntax),
            other => other.to_string(),
        }
    }

    /// The exit code documented for this kind of error in `docs/exit-codes.md`.
    pub fn exit_code(&self) -> i32 {
        self.class().exit_code
    }

    /// A stable machine-readable name for `--json` error output.
    pub fn kind(&self) -> &'static str {
        self.class().name
    }
}

/// A kind of error as every front end shows it: the `"kind"` of `--json` output, the
/// exit code (docs/exit-codes.md) and the exception the Python module raises (a subclass
/// of `BuildstateError`).
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    /// The `"kind"` of an error in `--json` output.
    pub name: &'static str,
    /// The Python exception's class name.
    pub python: &'static str,
    /// The process's exit code (`crate::exit`).
    pub exit_code: i32,
    /// One line for the Python class's docstring.
    pub doc: &'static str,
}

macro_rules! kinds {
    ($($variants:pat => $id:ident: $name:literal, $code:ident, $py:literal, $doc:literal;)+) => {
        impl Error {
            /// What kind of error this is (its row of the table): its exit code, its
            /// `--json` name, its Python exception ([`Kind`]).
            pub fn class(&self) -> &'static Kind {
                match self {
                    $($variants => &kind::$id,)+
                }
            }
        }

        /// The error kinds, one table for every front end ([`Error::class`]).
        pub mod kind {
            use super::Kind;
            $(pub const $id: Kind = Kind {
                name: $name,
                exit_code: crate::exit::$code,
                python: $py,
                doc: $doc,
            };)+
            /// Every kind, in the order of the table.
            pub const ALL: &[&Kind] = &[$(&$id),+];
        }
    };
}

// A row: the variants of this kind => its id: its `--json` name, exit code, Python
// class and docstring. A variant in no row does not compile (the match is exhaustive);
// `{ .. }` matches a variant whatever its fields.
kinds! {
    Error::UnknownBuild { .. } | Error::NotOnRemote { .. } | Error::NotArchived { .. } => UNKNOWN_BUILD: "unknown_build", UNKNOWN_BUILD, "UnknownBuildError", "The build id is not in the database (or the remote has no copy of it).";
    Error::Database { .. } | Error::Sqlite { .. } => DATABASE: "database", DATABASE, "DatabaseError", "The database cannot be used.";
    Error::Archived { .. } => ARCHIVED: "archived", UNKNOWN_BUILD, "ArchivedError", "The build left this database for a remote's archive; the message says how to bring it back.";
    Error::Conflict { .. } => CONFLICT: "conflict", CONFLICT, "ConflictError", "The build exists with another identity.";
    Error::Refused { .. } => REFUSED: "refused", REFUSED, "RefusedError", "The transition is not allowed; nothing was written.";
    Error::Leased { .. } => LEASED: "leased", BUSY, "LeasedError", "Another live worker holds the build's lease.";
    Error::Fenced { .. } => LEASE_LOST: "lease_lost", LEASE_LOST, "LeaseLostError", "This Store's lease on the state is no longer current (it expired and another worker took over); nothing was written.";
    Error::Blocked { .. } => BLOCKED: "blocked", BLOCKED, "BlockedError", "The state's prerequisite (requires) did not pass: the build is blocked on it and the state did not start.";
    Error::InvalidPlan { .. } => INVALID_PLAN: "invalid_plan", INVALID_PLAN, "InvalidPlanError", "The plan is invalid.";
    Error::InvalidInput { .. } | Error::NeedsReason { .. } => INVALID_INPUT: "invalid_input", INVALID_INPUT, "InvalidInputError", "An argument has a bad value.";
    Error::NoDatabase { .. } => NO_DATABASE: "no_database", NO_DATABASE, "NoDatabaseError", "There is no database file at the path (and create=False).";
    Error::RemoteChanged { .. } => REMOTE_CHANGED: "remote_changed", REMOTE_CHANGED, "RemoteChangedError", "Compare-and-swap lost: the remote copy changed since this database last saw it; nothing was overwritten.";
    Error::Diverged { .. } => DIVERGED: "diverged", DIVERGED, "DivergedError", "The local and remote histories of the build diverged; nothing was written.";
    Error::Remote { .. } => REMOTE: "remote", REMOTE, "RemoteError", "The remote could not be used; local state is untouched.";
    Error::Journaled { .. } => JOURNALED: "journaled", JOURNALED, "JournaledError", "The outcome is journaled on this machine: the remote stayed away longer than the lease.";
    Error::InvalidSnapshot { .. } => INVALID_SNAPSHOT: "invalid_snapshot", INVALID_SNAPSHOT, "InvalidSnapshotError", "A snapshot is invalid (truncated, altered, newer); nothing was written.";
    Error::ClockSkew { .. } => CLOCK_SKEW: "clock_skew", CLOCK_SKEW, "ClockSkewError", "This machine's clock is too far from the remote's; nothing was written.";
    Error::Output { .. } => OUTPUT: "output", OUTPUT, "OutputError", "The output could not be written; what was asked was done.";
    Error::Io { .. } => IO: "io", INTERNAL, "FileError", "A file could not be read or written.";
    Error::Corrupt { .. } => CORRUPT: "corrupt", INTERNAL, "CorruptError", "Stored data is corrupt.";
}

/// The front ends, each with its own way to say what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// The commands (`update-state B retry 5 --reason TEXT`).
    Cli,
    /// The Python `Store` (`store.complete("B", 5)`).
    Python,
    /// The Concourse resource's put (`params: {action: retry, state: 5, reason: TEXT}`).
    Concourse,
}

/// Something a person can do about a refusal, by what it is, not how it is typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A verb on a state of the build (`complete`, `retry`, `skip`), with a reason when
    /// the verb needs one.
    Verb {
        build_id: String,
        verb: &'static str,
        state: u8,
        reason: bool,
    },
    /// Going back to an earlier state on purpose.
    Rollback { build_id: String },
    /// How to give the reason a person's decision is recorded with.
    Reason,
    /// How a worker names itself as the lease holder, where the front end lets it
    /// (a Python `Store` is its own worker: nothing to say).
    Owner,
}

impl Hint {
    /// A verb on `state` of `build_id`; `reason`: a person's decision, which says why.
    pub fn verb(build_id: &str, verb: &'static str, state: u8, reason: bool) -> Hint {
        Hint::Verb {
            build_id: build_id.to_string(),
            verb,
            state,
            reason,
        }
    }

    /// The hint as `syntax` writes it. A verb that front end does not have is written
    /// as the command, from a shell.
    pub fn render(&self, syntax: Syntax) -> String {
        let cli = match self {
            Hint::Verb {
                build_id,
                verb,
                state,
                reason,
            } => format!(
                "`update-state {build_id} {verb} {state}{}`",
                if *reason { " --reason TEXT" } else { "" }
            ),
            Hint::Rollback { build_id } => {
                format!("`update-state {build_id} rollback --to STATE --reason TEXT`")
            }
            Hint::Reason => "pass --reason TEXT".into(),
            Hint::Owner => " (if you are that worker, pass --owner with its name)".into(),
        };
        match (syntax, self) {
            (Syntax::Cli, _) => cli,
            (Syntax::Python, Hint::Reason) => "pass reason=\"TEXT\"".into(),
            (Syntax::Python, Hint::Owner) => String::new(),
            (Syntax::Concourse, Hint::Reason) => "set `reason` in the put's params".into(),
            (Syntax::Concourse, Hint::Owner) => {
                " (if you are that worker, set `owner` in the put's params to its name)".into()
            }
            (
                Syntax::Python,
                Hint::Verb {
                    build_id,
                    verb: "complete",
                    state,
                    ..
                },
            ) => {
                format!("`store.complete(\"{build_id}\", {state})`")
            }
            (
                Syntax::Concourse,
                Hint::Verb {
                    verb,
                    state,
                    reason,
                    ..
                },
            ) => format!(
                "a put with `params: {{action: {verb}, state: {state}{}}}`",
                if *reason { ", reason: TEXT" } else { "" }
            ),
            (Syntax::Python | Syntax::Concourse, _) => format!("{cli}, from a shell"),
        }
    }
}

/// A refusal's message: text, and hints where what to do goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Hint(Hint),
}

impl Refusal {
    /// A refusal that begins with `text`.
    pub fn new(text: impl Into<String>) -> Refusal {
        Refusal(vec![Part::Text(text.into())])
    }

    /// Then a hint.
    pub fn hint(mut self, hint: Hint) -> Refusal {
        self.0.push(Part::Hint(hint));
        self
    }

    /// Then more text.
    pub fn then(mut self, text: impl Into<String>) -> Refusal {
        self.0.push(Part::Text(text.into()));
        self
    }

    /// The message as `syntax` writes its hints.
    pub fn render(&self, syntax: Syntax) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Hint(h) => h.render(syntax),
            })
            .collect()
    }
}

impl From<String> for Refusal {
    fn from(text: String) -> Refusal {
        Refusal::new(text)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(Syntax::Cli))
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
    use crate::exit;

    /// The table is whole: every kind has its own name and Python class, and a code
    /// from the documented list.
    #[test]
    fn every_kind_has_one_name_class_and_documented_code() {
        let mut names: Vec<_> = kind::ALL.iter().map(|k| k.name).collect();
        let mut classes: Vec<_> = kind::ALL.iter().map(|k| k.python).collect();
        names.sort();
        names.dedup();
        classes.sort();
        classes.dedup();
        assert_eq!(names.len(), kind::ALL.len());
        assert_eq!(classes.len(), kind::ALL.len());
        for k in kind::ALL {
            assert!(exit::ALL.iter().any(|(c, _)| *c == k.exit_code), "{k:?}");
            assert!(k.python.ends_with("Error") && !k.doc.is_empty(), "{k:?}");
        }
    }

    /// A hint is written in each front end's syntax; a verb a front end lacks is the
    /// command, from a shell. The command line's is what the messages always said.
    #[test]
    fn a_hint_is_written_in_each_front_ends_syntax() {
        let retry = Hint::verb("b", "retry", 5, true);
        let complete = Hint::verb("b", "complete", 5, false);
        let back = Hint::Rollback {
            build_id: "b".into(),
        };
        let written = [
            (
                &retry,
                Syntax::Cli,
                "`update-state b retry 5 --reason TEXT`",
            ),
            (
                &retry,
                Syntax::Concourse,
                "a put with `params: {action: retry, state: 5, reason: TEXT}`",
            ),
            (
                &retry,
                Syntax::Python,
                "`update-state b retry 5 --reason TEXT`, from a shell",
            ),
            (&complete, Syntax::Cli, "`update-state b complete 5`"),
            (&complete, Syntax::Python, "`store.complete(\"b\", 5)`"),
            (
                &back,
                Syntax::Concourse,
                "`update-state b rollback --to STATE --reason TEXT`, from a shell",
            ),
        ];
        for (hint, syntax, want) in written {
            assert_eq!(hint.render(syntax), want, "{hint:?} in {syntax:?}");
        }
        let r = Error::Refused(Refusal::new("do ").hint(complete).then(" first"));
        assert_eq!(r.to_string(), "do `update-state b complete 5` first");
        assert_eq!(
            r.render(Syntax::Python),
            "do `store.complete(\"b\", 5)` first"
        );
    }

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
