-- Schema version 11: what a state produced (issue 27). An `output` event carries its
-- values as a JSON object of text by key; the index reads just the events that decide
-- which outputs are current (crate::outputs::RELEVANT), so check-state and run-state
-- need not read a build's task results to find them.
ALTER TABLE events ADD COLUMN outputs TEXT;
CREATE INDEX events_outputs ON events(build_id, seq)
    WHERE kind IN ('output', 'start', 'force', 'reset', 'rerun', 'rollback');
