-- Upgrade a version-3 ledger to version 4. Table changes of this version
-- follow below (none yet); the functions are re-created by `ledger migrate`
-- from schema.sql's `functions` section. In this version the default retry
-- policy moved to ledger/retry_policy.py (ledger.backoff is gone: job_fail's
-- NULL retry_at means now), and the lease has no default in SQL.

-- Issue 13: the web app's sessions and sign-in throttle (see schema.sql's
-- `web sessions` block for what each table is for).
CREATE TABLE ledger.web_sessions (
    id_hash     bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    started_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX web_sessions_expires_idx ON ledger.web_sessions (expires_at);

CREATE TABLE ledger.web_auth_failures (
    client      text PRIMARY KEY,
    failures    int NOT NULL CHECK (failures >= 1),
    window_end  timestamptz NOT NULL
);
CREATE INDEX web_auth_failures_window_idx ON ledger.web_auth_failures (window_end);
