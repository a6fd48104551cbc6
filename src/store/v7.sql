-- Schema version 7: archiving (monitor archive, issue 17). A build moved to a remote's
-- archive/ prefix leaves the working tables; this record says where it went, so that
-- check-state can answer for it and `monitor unarchive` can bring it back.
CREATE TABLE archived (
    build_id TEXT PRIMARY KEY,
    lineage TEXT NOT NULL,
    serial INTEGER NOT NULL,
    status TEXT NOT NULL,
    remote TEXT NOT NULL,           -- the remote's name (credentials never stored)
    object TEXT NOT NULL,           -- the object's key under the remote's root
    archived_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;
-- The one way rows leave the append-only history: the archive path opens the gate for
-- one build inside its transaction and closes it before committing.
CREATE TABLE archive_gate (
    build_id TEXT PRIMARY KEY
) STRICT, WITHOUT ROWID;
DROP TRIGGER events_append_only_delete;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM archive_gate WHERE build_id = OLD.build_id)
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
