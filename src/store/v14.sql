-- Schema version 14: revoked, reused and archived outputs (issue 29). A `revoke` event withdraws
-- a build's current outputs and a `reused` one brings another build's, so the index
-- that finds the events deciding which outputs are current (crate::outputs::RELEVANT)
-- takes them in.
DROP INDEX events_outputs;
CREATE INDEX events_outputs ON events(build_id, seq)
    WHERE kind IN ('output', 'start', 'force', 'reset', 'rerun', 'rollback', 'revoke', 'reused');
-- An archived build's current outputs, kept with its archive record: a build that
-- consumed them (inputs.builds) is judged against them, not against nothing.
ALTER TABLE archived ADD COLUMN outputs TEXT;
