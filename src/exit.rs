//! Exit codes shared by every binary. `docs/exit-codes.md` is the user-facing copy of this
//! table; a test keeps the two in step.

/// The command did what was asked.
pub const OK: i32 = 0;
/// An unexpected failure (I/O error, bug). The message says what failed.
pub const INTERNAL: i32 = 1;
/// The command line was malformed (unknown flag, missing argument). Printed by clap.
pub const USAGE: i32 = 2;
/// The build id is not in the database.
pub const UNKNOWN_BUILD: i32 = 3;
/// The build exists with different identity (cloud, image, plan or metadata).
pub const CONFLICT: i32 = 4;
/// The transition is not allowed from the build's current status (backwards, out of
/// order, state not in the plan, build already completed). Nothing was written.
pub const REFUSED: i32 = 5;
/// The plan file is invalid. The message names the field.
pub const INVALID_PLAN: i32 = 6;
/// The database could not be opened or used (unreadable, newer schema, busy too long).
pub const DATABASE: i32 = 7;
/// An argument has the right shape for the command line but a bad value
/// (build id characters, `KEY=VALUE` syntax).
pub const INVALID_INPUT: i32 = 8;

/// The database file does not exist. Only init-state creates one: run it first, or
/// fix --db / BUILDSTATE_DB.
pub const NO_DATABASE: i32 = 9;

/// check-state: the build is completed; there is nothing to do.
pub const COMPLETED: i32 = 10;
/// check-state: a state is running; another worker holds the build.
pub const BUSY: i32 = 11;
/// check-state: a retry is scheduled but not yet due.
pub const WAIT: i32 = 12;
/// check-state: the build needs a person (failed with no automatic retry left).
pub const BLOCKED: i32 = 13;
/// run-state, update-state --attempt, the Python API: this worker's lease is no longer
/// current (it expired and another worker took over, or the state moved on). Its result
/// was not recorded.
pub const LEASE_LOST: i32 = 14;
/// sync-cloud and remote mode: the remote copy changed since this database last saw it
/// (another worker won the race). Nothing was overwritten: pull, then try again.
pub const REMOTE_CHANGED: i32 = 15;
/// sync-cloud: the local and remote histories diverged, or the remote copy is another build
/// with the same id. Nothing was written: a person chooses a side (docs/sync.md).
pub const DIVERGED: i32 = 16;
/// The remote could not be used: unreachable, refused, timed out, a bad URL or
/// credentials. Local state is untouched.
pub const REMOTE: i32 = 17;
/// A snapshot is invalid (truncated, altered, from a newer buildstate). Nothing was written.
pub const INVALID_SNAPSHOT: i32 = 18;
/// monitor wait: the timeout passed before the build got there.
pub const TIMEOUT: i32 = 19;
/// Remote mode: this machine's clock differs from the remote's by more than
/// `BUILDSTATE_MAX_CLOCK_SKEW`. Nothing was written: fix the clock (NTP).
pub const CLOCK_SKEW: i32 = 20;
/// The output could not be written (a full disk, `>/dev/full`); what was asked was done,
/// and a write is recorded. A closed pipe (`| head`) is not this: it is ignored.
pub const OUTPUT: i32 = 21;
/// Remote mode: the command ran and its outcome is recorded on this machine's journal,
/// not yet on the remote, which stayed away past the worker's lease. It lands, once,
/// with the next buildstate command here in remote mode (or `sync-cloud push`).
pub const JOURNALED: i32 = 22;
/// `monitor gc`, `update-state cancel --cleanup`, `reset --cleanup`: a resource's cleanup
/// command failed every try. It is recorded as `cleanup_failed` (the next collection
/// tries again); the rest was done.
pub const CLEANUP_FAILED: i32 = 23;

/// Every code with its name, in the order of `docs/exit-codes.md`.
pub const ALL: &[(i32, &str)] = &[
    (OK, "OK"),
    (INTERNAL, "INTERNAL"),
    (USAGE, "USAGE"),
    (UNKNOWN_BUILD, "UNKNOWN_BUILD"),
    (CONFLICT, "CONFLICT"),
    (REFUSED, "REFUSED"),
    (INVALID_PLAN, "INVALID_PLAN"),
    (DATABASE, "DATABASE"),
    (INVALID_INPUT, "INVALID_INPUT"),
    (NO_DATABASE, "NO_DATABASE"),
    (COMPLETED, "COMPLETED"),
    (BUSY, "BUSY"),
    (WAIT, "WAIT"),
    (BLOCKED, "BLOCKED"),
    (LEASE_LOST, "LEASE_LOST"),
    (REMOTE_CHANGED, "REMOTE_CHANGED"),
    (DIVERGED, "DIVERGED"),
    (REMOTE, "REMOTE"),
    (INVALID_SNAPSHOT, "INVALID_SNAPSHOT"),
    (TIMEOUT, "TIMEOUT"),
    (CLOCK_SKEW, "CLOCK_SKEW"),
    (OUTPUT, "OUTPUT"),
    (JOURNALED, "JOURNALED"),
    (CLEANUP_FAILED, "CLEANUP_FAILED"),
];
