-- Schema version 13: builds that wait for builds (issue 29). A build's `init` event
-- carries the `init-state --after` entries (BUILD:STATE, as JSON text) it waits for
-- before any of its states runs.
ALTER TABLE events ADD COLUMN after TEXT;
