-- Schema version 12: what a build made in the cloud (issue 27). A `resource` event
-- carries what it says of which resource as JSON (crate::resources::Op); the index reads
-- just the events the ledger and its orphans are judged from.
ALTER TABLE events ADD COLUMN resource TEXT;
CREATE INDEX events_resources ON events(build_id, seq)
    WHERE kind IN ('resource', 'takeover', 'force', 'rerun', 'reset', 'rollback');
