"""Type stubs for the Rust extension module ``buildstate._native``."""

from os import PathLike
from pathlib import Path
from typing import Any, TypeAlias, final

__all__ = [
    "Store",
    "default_db_path",
    "redact",
    "BuildstateError",
    "UnknownBuildError",
    "DatabaseError",
    "ArchivedError",
    "ConflictError",
    "RefusedError",
    "LeasedError",
    "LeaseLostError",
    "BlockedError",
    "InvalidPlanError",
    "InvalidInputError",
    "NoDatabaseError",
    "RemoteChangedError",
    "DivergedError",
    "RemoteError",
    "JournaledError",
    "InvalidSnapshotError",
    "ClockSkewError",
    "OutputError",
    "FileError",
    "CorruptError",
    "__version__",
]

__version__: str

class BuildstateError(Exception):
    """Base class of every buildstate error."""

    exit_code: int
    """The exit code the binaries use for this kind of error (docs/exit-codes.md)."""
    kind: str
    """A stable name: unknown_build, conflict, refused, leased, invalid_plan, ...
    (one subclass for each, below)."""

class UnknownBuildError(BuildstateError):
    """The build id is not in the database (or the remote has no copy of it)."""

class ArchivedError(BuildstateError):
    """The build left this database for a remote's archive; the message says how to bring it back."""

class ConflictError(BuildstateError):
    """The build exists with another identity."""

class RefusedError(BuildstateError):
    """The transition is not allowed; nothing was written."""

class LeasedError(BuildstateError):
    """Another live worker holds the build's lease."""

class LeaseLostError(BuildstateError):
    """This Store's lease on the state is no longer current (it expired and another worker took over); nothing was written."""

class BlockedError(BuildstateError):
    """The state's prerequisite (requires) did not pass: the build is blocked on it and the state did not start."""

class InvalidPlanError(BuildstateError):
    """The plan is invalid."""

class InvalidInputError(BuildstateError):
    """An argument has a bad value."""

class NoDatabaseError(BuildstateError):
    """There is no database file at the path (and create=False)."""

class DatabaseError(BuildstateError):
    """The database cannot be used."""

class RemoteChangedError(BuildstateError):
    """Compare-and-swap lost: the remote copy changed since this database last saw it; nothing was overwritten."""

class DivergedError(BuildstateError):
    """The local and remote histories of the build diverged; nothing was written."""

class RemoteError(BuildstateError):
    """The remote could not be used; local state is untouched."""

class JournaledError(BuildstateError):
    """The outcome is journaled on this machine: the remote stayed away longer than the lease."""

class InvalidSnapshotError(BuildstateError):
    """A snapshot is invalid (truncated, altered, newer); nothing was written."""

class ClockSkewError(BuildstateError):
    """This machine's clock is too far from the remote's; nothing was written."""

class OutputError(BuildstateError):
    """The output could not be written; what was asked was done."""

class FileError(BuildstateError):
    """A file could not be read or written."""

class CorruptError(BuildstateError):
    """Stored data is corrupt."""

_Report: TypeAlias = dict[str, Any]
"""What ``check-state --json`` prints: build_id, exists, status, current_state,
decision, next_state, reason, serial, lineage, last_error, metadata, ..."""

_StateDone: TypeAlias = dict[str, Any]
"""What ``Store.state_done`` answers: ``{"done": bool, "report": _Report}``."""

@final
class Store:
    """A buildstate database. Each method is one transaction; the GIL is released
    while the database is used."""

    def __new__(
        cls,
        path: str | PathLike[str] | None = None,
        *,
        create: bool = True,
        busy_timeout_ms: int | None = None,
        tool: str = "python",
        remote: str | None = None,
    ) -> Store:
        """``remote`` (default BUILDSTATE_REMOTE): remote mode, every write goes through
        the remote with compare-and-swap (docs/sync.md). ``busy_timeout_ms`` (default
        BUILDSTATE_BUSY_TIMEOUT, else 60000): how long a write waits for another
        writer's lock."""
    @property
    def path(self) -> Path: ...
    def set_context(self, context: dict[str, str]) -> None: ...
    def init(
        self,
        build_id: str,
        cloud: str,
        image: str,
        *,
        plan: str | PathLike[str] | None = None,
        meta: dict[str, str] | None = None,
        after: list[str] | None = None,
        reuse_from: str | None = None,
        inputs_root: str | PathLike[str] | None = None,
    ) -> _Report:
        """``after``: other builds' states (``BUILD:STATE``) every state of it waits for,
        as ``init-state --after``; the parents must exist (docs/plan.md#dependencies).
        ``reuse_from``: an identical build whose leading states a new build reuses, as
        ``init-state --reuse-from`` (inputs hashed under ``inputs_root``); the report's
        ``reuse`` says which (docs/plan.md#reuse)."""
    @property
    def owner(self) -> str:
        """This Store's name as a lease holder."""
    def start(
        self,
        build_id: str,
        state: int,
        *,
        lease_ttl_ms: int = 60000,
        inputs_root: str | PathLike[str] | None = None,
    ) -> _Report:
        """Start ``state`` holding the build's lease, renewed in the background until this
        Store completes, fails or interrupts it. A completed state starts again only when
        it is stale (the rerun is recorded first)."""
    def complete(
        self,
        build_id: str,
        state: int,
        *,
        inputs: list[str] | None = None,
        inputs_root: str | PathLike[str] | None = None,
    ) -> _Report:
        """Complete ``state``, recording the SHA-256 of its declared inputs and of the
        files matching ``inputs`` (globs relative to ``inputs_root``)."""
    def force(self, build_id: str, state: int | None = None, *, reason: str) -> _Report:
        """Mark ``state`` and every later state (None: every state) to run again."""
    def reset(self, build_id: str, *, reason: str) -> _Report:
        """Start the build over in a new epoch; history is kept."""
    def fail(
        self,
        build_id: str,
        state: int,
        message: str,
        *,
        category: str | None = None,
        exit_code: int | None = None,
    ) -> _Report: ...
    def interrupt(self, build_id: str, state: int, signal: str) -> _Report: ...
    def meta(self, build_id: str, pairs: dict[str, str]) -> _Report: ...
    def output(self, build_id: str, outputs: dict[str, str], *, state: int | None = None) -> _Report: ...
    def revoke(self, build_id: str, reason: str) -> _Report:
        """Withdraw the build's current outputs, as ``update-state revoke``: builds that
        consumed them become stale and are alerted (docs/plan.md#dependencies)."""
    def outputs(self, build_id: str) -> dict[str, dict[str, Any]]: ...
    def resource_add(
        self,
        build_id: str,
        rtype: str,
        id: str,
        *,
        props: dict[str, str] | None = None,
        cleanup: str | None = None,
        check: str | None = None,
        state: int | None = None,
    ) -> _Report: ...
    def resource_delete(self, build_id: str, rtype: str, id: str) -> _Report: ...
    def resources(self, build_id: str, *, older_than_s: int = 86400) -> list[dict[str, Any]]: ...
    def task(
        self,
        build_id: str,
        task: str,
        host: str,
        status: str,
        *,
        state: int | None = None,
        duration_ms: int | None = None,
        message: str | None = None,
    ) -> None:
        """Queued: written in batches by a background thread; returns at once."""
    def flush(self) -> None:
        """Wait until every queued task result is written; raise the first task-write
        error since the last call (transitions never fail because of one)."""
    def decide(
        self,
        build_id: str,
        *,
        inputs: bool = True,
        inputs_root: str | PathLike[str] | None = None,
    ) -> _Report: ...
    def state_done(
        self,
        build_id: str,
        state: int,
        *,
        inputs_root: str | PathLike[str] | None = None,
        inputs: bool = True,
    ) -> _StateDone: ...
    def events(self, build_id: str) -> list[dict[str, Any]]: ...

def default_db_path() -> Path: ...
def redact(text: str) -> str: ...
