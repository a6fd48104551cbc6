-- Schema version 8: counters that never go backwards (issue 25). `monitor metrics` exports
-- retries and completed-state durations as Prometheus counters, counted from the events
-- the database holds. A build that leaves (monitor archive) takes its events with it;
-- what they counted stays here, per plan and state (-1: no state), and goes back out
-- when the build is unarchived, so every counter stays what it was.
CREATE TABLE metric_removed (
    metric TEXT NOT NULL,           -- 'retries' or 'duration'
    plan TEXT NOT NULL,             -- the plan's name
    state INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum_ms INTEGER NOT NULL,
    PRIMARY KEY (metric, plan, state)
) STRICT, WITHOUT ROWID;
