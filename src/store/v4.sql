-- Schema version 4: the alert outbox, replacing version 1's unused `outbox` table.
-- Alerts may concern no build (database or monitor trouble); a claim keeps overlapping
-- deliverers (cron runs) from sending one alert twice; an alert that could not be
-- delivered after its retries is kept as 'gave_up', with the last error.
DROP TABLE outbox;
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    build_id TEXT,                  -- NULL: not about one build
    kind TEXT NOT NULL,             -- blocked, completed, cancelled, rollback, takeover, stuck, ...
    dedupe_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,          -- JSON facts, already redacted; never a secret
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'gave_up')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at TEXT NOT NULL,
    claimed_by TEXT,
    claimed_until TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT
) STRICT;
CREATE INDEX alerts_due ON alerts(next_try_at) WHERE state = 'pending';
CREATE INDEX alerts_done ON alerts(created_at) WHERE state != 'pending';
-- One Slack thread per build (Web API mode): later alerts reply in it.
CREATE TABLE slack_threads (
    build_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    thread_ts TEXT NOT NULL,
    PRIMARY KEY (build_id, channel)
) STRICT, WITHOUT ROWID;
-- monitor status and check read builds by status.
CREATE INDEX builds_status ON builds(status);
