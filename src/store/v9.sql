-- Schema version 9: the journal of outcomes not yet shared (issue 25), and indexes for
-- verdict events. In remote mode a worker whose command finished while the remote was
-- away keeps its outcome in the journal, durably, with the write id and attempt it
-- belongs to, until it lands on the remote: with the next command on this machine in
-- remote mode, or `sync-cloud push`.
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    build_id TEXT NOT NULL,
    remote TEXT NOT NULL,           -- the remote's name (credentials never stored)
    write_id TEXT NOT NULL UNIQUE,  -- the write's id: its events carry it once it lands
    outcome TEXT NOT NULL,          -- the transition, as JSON
    owner TEXT,                     -- the lease holder that made it
    fence INTEGER,                  -- the attempt it belongs to
    actor TEXT NOT NULL,            -- who, as JSON
    happened_at TEXT NOT NULL,      -- when the command ended: the time it is recorded with
    journaled_at TEXT NOT NULL,
    last_error TEXT                 -- why it has not landed yet (redacted)
) STRICT;
-- `monitor check` lists drifted builds and `monitor verify` picks the builds whose last
-- verdict is old: both read only verdict events, which these partial indexes hold.
CREATE INDEX events_drift ON events(build_id, seq) WHERE kind = 'drift';
CREATE INDEX events_verdicts ON events(build_id, at) WHERE kind IN ('verified', 'drift', 'unverified');
