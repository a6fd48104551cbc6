-- Schema version 6: a completion records what its state's inputs were (a JSON manifest:
-- docs/plan.md#inputs), so that a later change makes the state stale.
ALTER TABLE events ADD COLUMN inputs TEXT;
-- This machine's digests of input files, keyed by absolute path and trusted while size,
-- mtime, ctime and inode are unchanged (as git's index). Local only: never synced.
CREATE TABLE input_cache (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    digest BLOB NOT NULL,
    hashed_ns INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
