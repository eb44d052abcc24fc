-- Upgrade a version-3 ledger to version 4. `ledger migrate` has dropped every
-- ledger function, view and trigger before this runs, and re-creates them
-- from schema.sql's `functions` section after it (which also re-applies the
-- privileges); this script changes only the tables.
--
-- Version 4: each event carries a hash chaining it to its job's previous
-- event (events.hash) and each job the hash of its latest (jobs.head);
-- ledger.roles records the application and read-only roles. The retry
-- policy moved to Python (ledger.backoff is gone) and the lease has no SQL
-- default.

-- A job cancelled while it ran gets a `stopped` event when its body ends.
-- (Added before anything in this transaction uses it: a new enum value may
-- not be used in the transaction that adds it, and nothing here does.)
ALTER TYPE ledger.event_type ADD VALUE 'stopped';

ALTER TABLE ledger.workers ADD COLUMN queues text[], ADD COLUMN kinds text[];

ALTER TABLE ledger.events ADD COLUMN hash bytea;
ALTER TABLE ledger.jobs ADD COLUMN head bytea;

-- Chain the history written before version 4, one version at a time (each
-- hash needs the one before it). The expression is version 4's
-- ledger.event_hash, frozen here because the functions are gone while this
-- runs; tests/test_retention.py upgrades a version-1 ledger and checks that
-- `ledger verify` finds the result clean, which keeps the two equal.
DO $$
DECLARE
    v int := 1;
    top int := (SELECT coalesce(max(version), 0) FROM ledger.events);
BEGIN
    WHILE v <= top LOOP
        UPDATE ledger.events e
        SET hash = sha256(coalesce(p.hash, ''::bytea) || int8send(e.job_id) || int4send(e.version)
                          || timestamptz_send(e.at)
                          || textsend(e.type::text || E'\x1f' || e.data::text || E'\x1f' || e.metadata::text))
        FROM ledger.events e2
        LEFT JOIN ledger.events p ON p.job_id = e2.job_id AND p.version = e2.version - 1
        WHERE e2.job_id = e.job_id AND e2.version = e.version AND e.version = v;
        v := v + 1;
    END LOOP;
END $$;

UPDATE ledger.jobs j SET head = e.hash
FROM ledger.events e WHERE e.job_id = j.id AND e.version = j.version;

ALTER TABLE ledger.events ALTER COLUMN hash SET NOT NULL;
ALTER TABLE ledger.jobs ALTER COLUMN head SET NOT NULL;

CREATE TABLE ledger.roles (
    name    text PRIMARY KEY,
    access  text NOT NULL CHECK (access IN ('app', 'readonly'))
);

-- The web app's sessions and sign-in throttle (see schema.sql's
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

-- Flow control: paused queues (an append-only log and its projection),
-- limits per key, the recent starts of rate-limited keys, and the limit a
-- job counts against (NULL for every job enqueued before).
ALTER TABLE ledger.jobs ADD COLUMN limit_key text;
CREATE TABLE ledger.queue_events (
    position  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue     text NOT NULL,
    type      text NOT NULL CHECK (type IN ('paused', 'resumed')),
    at        timestamptz NOT NULL DEFAULT now(),
    by        text,
    reason    text
);
CREATE TABLE ledger.queue_state (
    queue       text PRIMARY KEY,
    paused      boolean NOT NULL,
    changed_at  timestamptz NOT NULL,
    changed_by  text,
    reason      text
);
CREATE TABLE ledger.limits (
    scope        text PRIMARY KEY CHECK (scope ~ '^(kind|queue):[A-Za-z0-9_.:-]+$'),
    concurrency  int CHECK (concurrency >= 1),
    rate         int CHECK (rate >= 1),
    per          interval CHECK (per > interval '0'),
    key_path     text[],
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (concurrency IS NOT NULL OR rate IS NOT NULL),
    CHECK ((rate IS NULL) = (per IS NULL))
);
CREATE TABLE ledger.limit_starts (
    limit_key  text PRIMARY KEY,
    starts     timestamptz[] NOT NULL
);
CREATE INDEX jobs_limited_idx ON ledger.jobs (queue) WHERE limit_key IS NOT NULL
    AND state IN ('available', 'scheduled', 'retryable');
CREATE INDEX jobs_limited_running_idx ON ledger.jobs (limit_key) WHERE limit_key IS NOT NULL AND state = 'running';

-- Unique jobs: a key and the states it holds in; the database refuses a
-- second job with the key in those states.
ALTER TABLE ledger.jobs ADD COLUMN unique_key text, ADD COLUMN unique_states ledger.job_state[];
CREATE UNIQUE INDEX jobs_unique_idx ON ledger.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = ANY (unique_states);

-- Results, progress and waiting: a running attempt's latest progress, and
-- the clients waiting for a job to end.
CREATE TABLE ledger.progress (
    job_id   bigint PRIMARY KEY REFERENCES ledger.jobs (id) ON DELETE CASCADE,
    attempt  int NOT NULL,
    at       timestamptz NOT NULL,
    value    jsonb NOT NULL
);
CREATE TABLE ledger.waiters (
    job_id  bigint NOT NULL,
    since   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waiters_job_idx ON ledger.waiters (job_id);
-- Cron schedules, bulk acts and the throughput rollup (see schema.sql's
-- `schedules`, `bulk actions` and `throughput` blocks for what each is for).
-- The rollup starts at the history's end: the chart covers what happens
-- from the upgrade on, rather than a first refresh folding all of it.
-- Cron schedules: a job enqueued at each slot of a cron expression read as
-- wall-clock time in an IANA time zone. The slots are computed in Python
-- (ledger/cron.py, over the cronsim library: what a slot is across a DST
-- change is said there, once); the database admits one enqueue per slot
-- across every worker by a compare-and-set on next_run_at
-- (ledger.schedule_fire), as ledger.periodic does for fixed periods.
-- Workers declare the schedules their app registers (ledger.schedule_declare);
-- the last worker to start with a changed definition declares it.
CREATE TABLE ledger.schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    timezone      text NOT NULL,
    kind          text NOT NULL,
    args          jsonb NOT NULL,
    queue         text NOT NULL,
    priority      int NOT NULL,
    max_attempts  int NOT NULL,
    missed        text NOT NULL CHECK (missed IN ('skip', 'once')),  -- slots passed while no worker ran
    grace         interval NOT NULL,  -- how late a slot may still run under 'skip'
    -- The next slot; or, just after a declaration or a resume, the time from
    -- which slots count (a worker then writes the slot itself).
    next_run_at   timestamptz NOT NULL,
    last_slot     timestamptz,
    last_job_id   bigint,
    declared_at   timestamptz NOT NULL,
    paused        boolean NOT NULL DEFAULT false,
    changed_at    timestamptz,  -- the latest pause or resume: when, who, why
    changed_by    text,
    reason        text
);
-- What happened to the schedules, append-only: each definition declared,
-- each pause and resume (who, why), and the slots that passed without a job
-- of their own while no worker ran (how many, the first and the last, and
-- whether one job stood for them).
CREATE TABLE ledger.schedule_events (
    position  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule  text NOT NULL,
    type      text NOT NULL CHECK (type IN ('declared', 'paused', 'resumed', 'missed')),
    at        timestamptz NOT NULL DEFAULT now(),
    by        text,
    reason    text,
    data      jsonb NOT NULL DEFAULT '{}'
);

-- One row per bulk replay or cancel (ledger.jobs_replay_bulk,
-- jobs_cancel_bulk): the act an operator did once — its filter, who, by
-- which door, why. Each job's replayed or cancelled event carries the same
-- batch id, so the history shows which events were one act. Append-only.
CREATE TABLE ledger.bulk_actions (
    batch    uuid PRIMARY KEY,
    action   text NOT NULL CHECK (action IN ('replay', 'cancel')),
    filters  jsonb NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    by       text,
    via      text,
    reason   text
);

-- Outcomes per minute and kind, for the dashboard's chart: folded from the
-- events after a cursor (ledger.throughput_refresh), as the metrics'
-- histograms are, so drawing the last hours reads a few hundred rows of
-- this table whatever the size of the ledger. Derived, not history: rows
-- older than eight days are dropped by the refresh.
CREATE TABLE ledger.throughput_cursor (
    id         int PRIMARY KEY CHECK (id = 1),
    position   bigint NOT NULL,
    folded_at  timestamptz
);
INSERT INTO ledger.throughput_cursor
SELECT 1, coalesce((SELECT s.last_value FROM pg_sequences s
                     WHERE s.schemaname = 'ledger' AND s.sequencename = 'events_position_seq'), 0), NULL;

CREATE TABLE ledger.throughput (
    minute     timestamptz NOT NULL,  -- date_bin('1 minute', at, epoch): whole minutes, in any time zone
    kind       text NOT NULL,
    succeeded  bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,  -- failed attempts that will retry, and rescues
    discarded  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, kind)
);
