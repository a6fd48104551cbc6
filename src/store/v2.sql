-- Schema version 2: retry timing, leases and manual intervention.
ALTER TABLE builds ADD COLUMN first_attempt_at TEXT;
ALTER TABLE builds ADD COLUMN next_attempt_at TEXT;
ALTER TABLE builds ADD COLUMN extra_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN blocked_reason TEXT;
ALTER TABLE builds ADD COLUMN lease_owner TEXT;
ALTER TABLE builds ADD COLUMN lease_expires_at TEXT;
-- Version 1 had no retry policies: a failed state needed a person.
UPDATE builds SET status = 'blocked', blocked_reason = 'failed before retry policies were recorded'
WHERE status = 'failed';
