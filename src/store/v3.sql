-- Schema version 3: what this database last saw of each build on each remote
-- (sync-cloud): the object's ETag for compare-and-swap, and its serial and lineage.
CREATE TABLE remote_sync (
    remote TEXT NOT NULL,           -- the remote URL, without credentials
    build_id TEXT NOT NULL,
    etag TEXT NOT NULL,
    serial INTEGER NOT NULL,
    lineage TEXT NOT NULL,
    synced_at TEXT NOT NULL,
    PRIMARY KEY (remote, build_id)
) STRICT, WITHOUT ROWID;
