-- Schema version 1. Never edit a released migration: add a new one to MIGRATIONS.
CREATE TABLE plans (
    hash TEXT PRIMARY KEY,          -- sha256 of body
    name TEXT NOT NULL,
    body TEXT NOT NULL              -- canonical JSON of the plan
) STRICT;

CREATE TABLE builds (
    build_id TEXT PRIMARY KEY,
    lineage TEXT NOT NULL UNIQUE,
    serial INTEGER NOT NULL CHECK (serial >= 1),
    cloud TEXT NOT NULL,
    image TEXT NOT NULL,
    plan_hash TEXT NOT NULL REFERENCES plans(hash),
    current_state INTEGER CHECK (current_state BETWEEN 0 AND 100),
    active_state INTEGER CHECK (active_state BETWEEN 0 AND 100),
    status TEXT NOT NULL CHECK (status IN
        ('pending', 'running', 'failed', 'waiting', 'blocked', 'completed', 'cancelled')),
    attempt INTEGER NOT NULL DEFAULT 0,
    attempt_started_at TEXT,
    last_error TEXT,
    last_category TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

-- The append-only history. seq counts events per build; serial is the build's serial
-- after the write that appended the event.
CREATE TABLE events (
    build_id TEXT NOT NULL REFERENCES builds(build_id),
    seq INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    state INTEGER,
    attempt INTEGER,
    message TEXT,
    category TEXT,
    exit_code INTEGER,
    duration_ms INTEGER,
    actor TEXT NOT NULL,            -- JSON: host, user, pid, tool, context
    PRIMARY KEY (build_id, seq)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

CREATE TABLE build_meta (
    build_id TEXT NOT NULL REFERENCES builds(build_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_serial INTEGER NOT NULL,
    PRIMARY KEY (build_id, key)
) STRICT, WITHOUT ROWID;

-- Alerts waiting for delivery (filled by the notification issue).
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    build_id TEXT NOT NULL REFERENCES builds(build_id),
    dedupe_key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    payload TEXT NOT NULL,          -- JSON, already redacted
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at TEXT NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT
) STRICT;
CREATE INDEX outbox_due ON outbox(next_try_at) WHERE delivered_at IS NULL;
