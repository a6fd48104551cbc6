"""buildstate: a durable, resumable record of where an image build is.

The logic lives in the Rust state crate; this package is its Python face
(``buildstate._native``) plus the Ansible callback plugin (``buildstate.ansible``).

    >>> import buildstate
    >>> store = buildstate.Store("/tmp/state.db")
    >>> store.init("img-42", "aws", "rhel9")["created"]
    True
    >>> store.start("img-42", 5)["status"]
    'running'
    >>> store.complete("img-42", 5)["current_state"]
    5
"""

from buildstate._native import (
    ArchivedError,
    BlockedError,
    BuildstateError,
    ClockSkewError,
    ConflictError,
    CorruptError,
    DatabaseError,
    DivergedError,
    FileError,
    InvalidInputError,
    InvalidPlanError,
    InvalidSnapshotError,
    JournaledError,
    LeaseLostError,
    LeasedError,
    NoDatabaseError,
    OutputError,
    RefusedError,
    RemoteChangedError,
    RemoteError,
    Store,
    UnknownBuildError,
    __version__,
    default_db_path,
    redact,
)

__all__ = [
    "ArchivedError",
    "BlockedError",
    "BuildstateError",
    "ClockSkewError",
    "ConflictError",
    "CorruptError",
    "DatabaseError",
    "DivergedError",
    "FileError",
    "InvalidInputError",
    "InvalidPlanError",
    "InvalidSnapshotError",
    "JournaledError",
    "LeaseLostError",
    "LeasedError",
    "NoDatabaseError",
    "OutputError",
    "RefusedError",
    "RemoteChangedError",
    "RemoteError",
    "Store",
    "UnknownBuildError",
    "__version__",
    "default_db_path",
    "redact",
]
