"""Type stubs for the Rust extension module ``buildstate._native``."""

from os import PathLike
from pathlib import Path
from typing import Any

__version__: str

class BuildstateError(Exception):
    """Base class of every buildstate error."""

    exit_code: int
    """The exit code the binaries use for this kind of error (docs/exit-codes.md)."""
    kind: str
    """A stable name: unknown_build, conflict, refused, leased, invalid_plan, ..."""

class UnknownBuildError(BuildstateError): ...
class ConflictError(BuildstateError): ...
class RefusedError(BuildstateError): ...
class LeasedError(BuildstateError): ...
class LeaseLostError(BuildstateError):
    """This Store's lease on the state expired and another worker took over; nothing was written."""

class NoDatabaseError(BuildstateError):
    """No database file at the path (with ``create=False``)."""

class InvalidPlanError(BuildstateError): ...
class InvalidInputError(BuildstateError): ...
class DatabaseError(BuildstateError): ...

Report = dict[str, Any]
"""What ``check-state --json`` prints: build_id, exists, status, current_state,
decision, next_state, reason, serial, lineage, last_error, metadata, ..."""

class Store:
    """A buildstate database. Each method is one transaction; the GIL is released
    while the database is used."""

    def __init__(
        self,
        path: str | PathLike[str] | None = None,
        *,
        create: bool = True,
        busy_timeout_ms: int | None = None,
        tool: str = "python",
        remote: str | None = None,
    ) -> None:
        """``remote`` (default BUILDSTATE_REMOTE): remote mode, every write goes through
        the remote with compare-and-swap (docs/sync.md)."""
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
    ) -> Report: ...
    @property
    def owner(self) -> str:
        """This Store's name as a lease holder."""
    def start(
        self,
        build_id: str,
        state: int,
        *,
        lease_ttl_ms: int = 60000,
        inputs_root: str | os.PathLike[str] | None = None,
    ) -> Report:
        """Start ``state`` holding the build's lease, renewed in the background until this
        Store completes, fails or interrupts it. A completed state starts again only when
        it is stale (the rerun is recorded first)."""
    def complete(
        self,
        build_id: str,
        state: int,
        *,
        inputs: list[str] | None = None,
        inputs_root: str | os.PathLike[str] | None = None,
    ) -> Report:
        """Complete ``state``, recording the SHA-256 of its declared inputs and of the
        files matching ``inputs`` (globs relative to ``inputs_root``)."""
    def force(self, build_id: str, state: int | None = None, *, reason: str) -> Report:
        """Mark ``state`` and every later state (None: every state) to run again."""
    def reset(self, build_id: str, *, reason: str) -> Report:
        """Start the build over in a new epoch; history is kept."""
    def fail(
        self,
        build_id: str,
        state: int,
        message: str,
        *,
        category: str | None = None,
        exit_code: int | None = None,
    ) -> Report: ...
    def interrupt(self, build_id: str, state: int, signal: str) -> Report: ...
    def meta(self, build_id: str, pairs: dict[str, str]) -> Report: ...
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
        inputs_root: str | os.PathLike[str] | None = None,
    ) -> Report: ...
    def events(self, build_id: str) -> list[dict[str, Any]]: ...

def default_db_path() -> Path: ...
def redact(text: str) -> str: ...
