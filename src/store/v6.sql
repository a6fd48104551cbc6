-- Schema version 6: a completion records what its state's inputs were (a JSON manifest:
-- docs/plan.md#inputs), so that a later change makes the state stale.
ALTER TABLE events ADD COLUMN inputs TEXT;
-- This machine's digests of input files, one record per inputs root: fixed-size entries
-- (device, inode, size, mtime, ctime, when hashed, SHA-256), trusted while the file's
-- stat is unchanged (as git's index). Local only: never synced.
CREATE TABLE input_cache (
    root TEXT PRIMARY KEY,
    entries BLOB NOT NULL,
    updated_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;
-- monitor status shows when each build last passed its verify commands.
CREATE INDEX events_verified ON events(build_id, at) WHERE kind = 'verified';
