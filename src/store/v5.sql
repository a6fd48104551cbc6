-- Schema version 5: each event records the lease owner that wrote it, the id of the write
-- that appended it (a writer whose answer from the remote was lost finds its own write by
-- it, instead of applying it twice), and the time that write set: the lease's expiry on a
-- start, the next retry on a fail, an interrupt or a retry. With these, an importer checks
-- a snapshot's summary against what its events imply.
ALTER TABLE events ADD COLUMN owner TEXT;
ALTER TABLE events ADD COLUMN write_id TEXT;
ALTER TABLE events ADD COLUMN until TEXT;
-- Alerts raised in remote mode travel with the build's snapshot and are delivered through
-- the remote's compare-and-swap claims, by whichever machine runs `monitor deliver`;
-- `shared` marks them (a local `monitor deliver` leaves them alone).
ALTER TABLE alerts ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
