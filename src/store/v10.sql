-- Schema version 10: typed event fields (issue 26). A `pruned` event's count of the task
-- results that left the history was only in its message; it is a column now, filled for
-- the events written before from that message (the one place it is still parsed, with
-- old snapshots: Snapshot::from_json).
ALTER TABLE events ADD COLUMN count INTEGER;
DROP TRIGGER events_append_only_update;
UPDATE events SET count = CAST(substr(message, 1, instr(message, ' ') - 1) AS INTEGER)
WHERE kind = 'pruned' AND message GLOB '[0-9]* task result(s) recorded before *';
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
