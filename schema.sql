-- ledger schema: the database's API.
--
-- schema-version: 7
--
-- The record of truth is ledger.events, an append-only table of job events.
-- ledger.jobs (current state) and ledger.discarded (dead letters) are
-- projections: every function below appends event(s) and updates the
-- projections in the same transaction, and ledger.jobs_folded() re-derives
-- them from the events alone. `ledger migrate` applies this file once per
-- schema version, in one transaction, under an advisory lock.
--
-- Where the rules live: ledger.fold() is the single statement of what each
-- event does to a job and which states it may come from. Single-job commands
-- go through it (ledger._append). The two hot batch paths (enqueue_many,
-- claim) are written set-based for speed and restate the enqueued/started
-- rules; the rebuild check (tests and `ledger rebuild --check`) compares
-- them with the fold, so a drift shows up at once.
--
-- Errors use SQLSTATE class LG so clients can map them:
--   LG001 illegal transition, LG002 version conflict, LG003 job not found,
--   LG004 invalid argument, LG005 history is append-only, LG006 not found
--   (a schedule, a limit: anything named that is not a job).
--
-- Upgrades: `ledger migrate` brings an older database forward: it drops
-- every ledger function, runs ledger/upgrades/<version>.sql (the tables),
-- then this file from the `functions` section to the end, which is why
-- nothing after that line may create a table, and no table may use a ledger
-- function (in a default, say): the drop would take it along.

CREATE SCHEMA ledger;

-- ---------------------------------------------------------------- types

-- Keep in step with ledger/states.py (a test compares them).
CREATE TYPE ledger.job_state AS ENUM (
    'scheduled',   -- waiting for run_at (enqueued for later, or snoozed)
    'available',   -- ready to be claimed now
    'running',     -- claimed by a worker (started event)
    'retryable',   -- an attempt failed; claimable again from run_at
    'succeeded',   -- terminal: the work completed
    'cancelled',   -- terminal: stopped on purpose; replay can revive it
    'discarded'    -- terminal: attempts spent or rescued with none left; in ledger.discarded
);

CREATE TYPE ledger.event_type AS ENUM (
    'enqueued',    -- job created: kind, queue, priority, args, max_attempts, run_at
    'started',     -- claimed by a worker; attempt + 1
    'succeeded',   -- running -> succeeded
    'failed',      -- running attempt failed, budget left -> retryable at run_at
    'discarded',   -- running attempt failed with no budget left (or job gave up) -> discarded
    'cancelled',   -- scheduled/available/retryable/running -> cancelled
    'snoozed',     -- running -> scheduled at run_at; max_attempts + 1 so it costs no attempt
    'rescued',     -- running job of a vanished worker -> retryable now, or discarded if no budget
    'replayed',    -- discarded/cancelled -> available with a fresh attempt budget
    'stopped'      -- the body of a job cancelled while it ran has ended (cancelled -> cancelled): when, and how
);

-- ---------------------------------------------------------------- tables

CREATE TABLE ledger.schema_version (
    version     int PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE ledger.job_id_seq;

-- The ledger. One row per state change, never updated (see the triggers).
-- Partitioned by job id range, so a job's whole history lives in one
-- partition: retention (ledger.events_prune_partition) drops or rewrites
-- whole partitions and never deletes rows. Not by time: the primary key must
-- contain the partition key, and (job_id, version) is the key that enforces
-- one writer per version; a time key would also split one job's history.
CREATE TABLE ledger.events (
    position  bigint GENERATED ALWAYS AS IDENTITY,
    job_id    bigint NOT NULL,
    version   int NOT NULL CHECK (version >= 1),
    type      ledger.event_type NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    data      jsonb NOT NULL DEFAULT '{}',
    metadata  jsonb NOT NULL DEFAULT '{}',
    -- sha256 chaining this event to its job's previous one (ledger.event_hash):
    -- an edit made behind the triggers' back breaks the chain (`ledger verify`).
    hash      bytea NOT NULL,
    -- One writer per version: two writers racing on a job cannot both append v.
    CONSTRAINT events_pkey PRIMARY KEY (job_id, version)
) PARTITION BY RANGE (job_id);
-- position is the global order (unique by construction: an identity). It is
-- read in ranges (metrics since a cursor) and appended in order, which is
-- what a BRIN index is for: nearly free to maintain, where a second b-tree
-- would cost a write per event on the hot path.
CREATE INDEX events_position_brin ON ledger.events USING brin (position);

-- How ledger.events is cut: `size` job ids per partition (for partitions
-- created from now on; change it with an UPDATE), and the first job id no
-- partition covers yet. ledger.events_partitions_ensure keeps at least one
-- spare partition ahead of the job id sequence.
CREATE TABLE ledger.events_partitioning (
    id             int PRIMARY KEY CHECK (id = 1),
    size           bigint NOT NULL CHECK (size >= 10),
    covered_until  bigint NOT NULL
);
INSERT INTO ledger.events_partitioning VALUES (1, 1000000, 1);

-- One row per partition of ledger.events: its job id range [lo, hi).
CREATE TABLE ledger.events_partitions (
    lo         bigint PRIMARY KEY,
    hi         bigint NOT NULL CHECK (hi > lo),
    name       text NOT NULL UNIQUE,
    pruned_at  timestamptz  -- last rewrite by retention
);

-- Current state, one row per job. Hot: every transition rewrites its row, so
-- leave room on each page for the new tuple version.
CREATE TABLE ledger.jobs (
    id            bigint PRIMARY KEY,
    kind          text NOT NULL,
    queue         text NOT NULL,
    priority      smallint NOT NULL,
    args          jsonb NOT NULL,
    state         ledger.job_state NOT NULL,
    attempt       int NOT NULL,
    max_attempts  int NOT NULL,
    run_at        timestamptz NOT NULL,
    last_error    text,
    worker        text,
    created_at    timestamptz NOT NULL,
    attempted_at  timestamptz,
    finalized_at  timestamptz,
    updated_at    timestamptz NOT NULL,
    version       int NOT NULL,
    head          bytea NOT NULL,  -- the hash of the job's latest event: where its chain continues
    -- The limit this job counts against, `<scope>|<key>` (ledger.limits), set at
    -- enqueue from the limits then declared; NULL: no limit, the claim's fast path.
    limit_key     text,
    -- Uniqueness: no two jobs with one unique_key are both in their
    -- unique_states (jobs_unique_idx). NULL: not unique.
    unique_key    text,
    unique_states ledger.job_state[]
) WITH (
    fillfactor = 80,
    -- A queue table churns: every claim and completion leaves a dead tuple and
    -- dead entries at the head of jobs_claim_idx that each claim must step over.
    -- Vacuum it early and without throttling so the head stays short.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);

-- Dead letters: jobs whose latest event left them discarded.
CREATE TABLE ledger.discarded (
    job_id        bigint PRIMARY KEY,
    kind          text NOT NULL,
    queue         text NOT NULL,
    args          jsonb NOT NULL,
    attempt       int NOT NULL,
    max_attempts  int NOT NULL,
    errors        jsonb NOT NULL,  -- [{attempt, error, at}] of every failure since the last replay
    discarded_at  timestamptz NOT NULL
);

-- Liveness of workers. A job's lease is its worker's: one heartbeat row per
-- worker keeps all its running jobs alive, instead of one write per job.
CREATE TABLE ledger.workers (
    id            text PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    -- What the worker serves, as of its last heartbeat: a job whose kind no
    -- live worker of its queue can run stays available (ledger.kinds_unserved).
    queues        text[],
    kinds         text[]
);

-- Periodic jobs: when each is next due. A worker that wins the row's
-- compare-and-set for a period enqueues that period's job; the others see
-- the period taken. No leader election, and no duplicate per period.
CREATE TABLE ledger.periodic (
    name         text PRIMARY KEY,
    every        interval NOT NULL,
    next_run_at  timestamptz NOT NULL,
    last_job_id  bigint
);

-- Metrics: histograms of pickup latency and run time per kind, folded
-- incrementally from completion events after a cursor, so a scrape costs
-- work in proportion to what happened since the last one, not to history.
CREATE TABLE ledger.metrics_cursor (
    id        int PRIMARY KEY CHECK (id = 1),
    position  bigint NOT NULL
);
INSERT INTO ledger.metrics_cursor VALUES (1, 0);

CREATE TABLE ledger.metrics_histogram (
    metric  text NOT NULL,              -- 'wait' (due -> started) or 'run' (started -> outcome)
    kind    text NOT NULL,
    le      float8 NOT NULL,            -- bucket upper bound in seconds; 'Infinity' counts all
    count   bigint NOT NULL DEFAULT 0,
    sum     float8 NOT NULL DEFAULT 0,  -- meaningful on the 'Infinity' row only
    PRIMARY KEY (metric, kind, le)
);

-- The roles that use the ledger besides its owner (`ledger roles`): `app`
-- (workers, web, clients: the API functions and the read views) and
-- `readonly` (dashboards and reports: the read views and read functions).
-- ledger.grants_apply() grants from this table; migrate re-applies it.
CREATE TABLE ledger.roles (
    name    text PRIMARY KEY,
    access  text NOT NULL CHECK (access IN ('app', 'readonly'))
);

-- ---------------------------------------------------------------- flow control
-- Pausing a queue is recorded like everything else: an append-only log of
-- who paused or resumed which queue, when and why (queue_events), and its
-- projection (queue_state), which the claim reads.
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

-- Limits across the whole fleet, enforced in the claim: at most
-- `concurrency` jobs running at once and at most `rate` starts in any window
-- of length `per`, per key. The scope is `kind:<kind>` or `queue:<queue>`
-- (a kind's limit applies before its queue's); the key is the args value at
-- key_path (NULL: one key for the whole scope). Jobs carry their
-- `<scope>|<key>` in jobs.limit_key from the enqueue on.
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

-- The latest starts of each rate-limited key, newest last, at most `rate`
-- of them: enough to tell whether any window of length `per` is full.
CREATE TABLE ledger.limit_starts (
    limit_key  text PRIMARY KEY,
    starts     timestamptz[] NOT NULL
);

-- ---------------------------------------------------------------- results, progress and waiting
-- A job's result is in its `succeeded` event (data.result). Progress is not
-- a change of state, so it is not an event: the latest report of the running
-- attempt, kept beside the job and gone with it (retention, a rebuild).
CREATE TABLE ledger.progress (
    job_id   bigint PRIMARY KEY REFERENCES ledger.jobs (id) ON DELETE CASCADE,
    attempt  int NOT NULL,
    at       timestamptz NOT NULL,
    value    jsonb NOT NULL
);

-- Clients waiting for a job to finish (client.wait): a job that ends with
-- a row here NOTIFYs `ledger:done` with its id, so nobody polls and a job
-- nobody waits for costs nothing. A row a dead client left is swept by age.
CREATE TABLE ledger.waiters (
    job_id  bigint NOT NULL,
    since   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waiters_job_idx ON ledger.waiters (job_id);

-- ---------------------------------------------------------------- web sessions
-- The web app's own state, shared by all its processes: who is signed in to
-- the dashboard, and who keeps guessing the API token. Both are here rather
-- than in a process's memory because gunicorn runs several processes (and a
-- deployment may run several hosts): a session started in one must open the
-- next request's process, and failures counted in one must count in all.

-- Dashboard sessions. The cookie holds a random id (32 bytes from
-- `secrets`); only its SHA-256 is stored, so a copy of this table cannot be
-- replayed as cookies, and nothing here or in the cookie is derived from the
-- API token. A session ends at expires_at (LEDGER_SESSION_TTL after the
-- sign-in) or at sign-out, whichever comes first.
CREATE TABLE ledger.web_sessions (
    id_hash     bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    started_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
-- Expired sessions are found and removed by age.
CREATE INDEX web_sessions_expires_idx ON ledger.web_sessions (expires_at);

-- Failed attempts at the API token (sign-in form or bearer header), per
-- client address, in a fixed window that opens at the client's first
-- failure and closes at window_end. A client with LEDGER_AUTH_MAX_FAILURES
-- failures in its window waits until window_end before any token it sends is
-- compared again.
CREATE TABLE ledger.web_auth_failures (
    client      text PRIMARY KEY,
    failures    int NOT NULL CHECK (failures >= 1),
    window_end  timestamptz NOT NULL
);
-- Rows of closed windows are found and removed by age.
CREATE INDEX web_auth_failures_window_idx ON ledger.web_auth_failures (window_end);

-- ---------------------------------------------------------------- schedules
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

-- ---------------------------------------------------------------- bulk actions
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

-- ---------------------------------------------------------------- throughput
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
INSERT INTO ledger.throughput_cursor VALUES (1, 0, NULL);

CREATE TABLE ledger.throughput (
    minute     timestamptz NOT NULL,  -- date_bin('1 minute', at, epoch): whole minutes, in any time zone
    kind       text NOT NULL,
    succeeded  bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,  -- failed attempts that will retry, and rescues
    discarded  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, kind)
);

-- ---------------------------------------------------------------- indexes

-- The claim: claimable rows of a queue in the order they are taken.
CREATE INDEX jobs_claim_idx ON ledger.jobs (queue, priority, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
-- The rescue and the running counts: running jobs by queue and worker.
CREATE INDEX jobs_running_idx ON ledger.jobs (queue, worker) WHERE state = 'running';
-- Limits (ledger._claim_limited): which due jobs of a queue are limited, and how
-- many of a key run. Only limited jobs have entries, so the rest pay nothing.
CREATE INDEX jobs_limited_idx ON ledger.jobs (queue) WHERE limit_key IS NOT NULL
    AND state IN ('available', 'scheduled', 'retryable');
CREATE INDEX jobs_limited_running_idx ON ledger.jobs (limit_key) WHERE limit_key IS NOT NULL AND state = 'running';
-- Unique jobs: the database refuses a second job whose key matches one in
-- the chosen states, however many enqueues race. The states are in the
-- predicate, so a job that leaves them frees its key. Only unique jobs have
-- entries.
CREATE UNIQUE INDEX jobs_unique_idx ON ledger.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = ANY (unique_states);
-- No index on state alone: every transition changes state, so such an index
-- would take two more writes per job on the hot path. Counts of waiting and
-- running jobs use the two partial indexes above; listings walk the primary key.
-- `ledger failed`: newest first.
CREATE INDEX discarded_at_idx ON ledger.discarded (discarded_at DESC, job_id DESC);

-- ---------------------------------------------------------------- functions

-- The read API: views the application and read-only roles select from, in
-- place of the tables (which no role but the owner may touch). Re-created
-- with the functions on an upgrade, so a table change never trips over them.

CREATE VIEW ledger.read_jobs AS
    SELECT id, kind, queue, priority, args, state, attempt, max_attempts, run_at, last_error, worker,
           created_at, attempted_at, finalized_at, updated_at, version, limit_key, unique_key
    FROM ledger.jobs;

CREATE VIEW ledger.read_queue_events AS
    SELECT position, queue, type, at, by, reason FROM ledger.queue_events;

CREATE VIEW ledger.read_queue_state AS
    SELECT queue, paused, changed_at, changed_by, reason FROM ledger.queue_state;

CREATE VIEW ledger.read_progress AS
    SELECT job_id, attempt, at, value FROM ledger.progress;

CREATE VIEW ledger.read_limits AS
    SELECT scope, concurrency, rate, per, key_path, updated_at FROM ledger.limits;

CREATE VIEW ledger.read_events AS
    SELECT position, job_id, version, type, at, data, metadata, hash FROM ledger.events;

CREATE VIEW ledger.read_discarded AS
    SELECT d.*, j.last_error FROM ledger.discarded d JOIN ledger.jobs j ON j.id = d.job_id;

CREATE VIEW ledger.read_metrics AS
    SELECT metric, kind, le, count, sum FROM ledger.metrics_histogram;

CREATE VIEW ledger.read_partitions AS
    SELECT lo, hi, name, pruned_at FROM ledger.events_partitions;

CREATE VIEW ledger.read_schema_versions AS
    SELECT version, applied_at FROM ledger.schema_version;


-- Raise the one message for a transition a job's state does not allow.
CREATE FUNCTION ledger._refuse(j ledger.jobs, etype ledger.event_type, allowed ledger.job_state[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    verb text := CASE etype
        WHEN 'started' THEN 'started'
        WHEN 'succeeded' THEN 'marked succeeded'
        WHEN 'failed' THEN 'marked failed'
        WHEN 'discarded' THEN 'discarded'
        WHEN 'cancelled' THEN 'cancelled'
        WHEN 'snoozed' THEN 'snoozed'
        WHEN 'rescued' THEN 'rescued'
        WHEN 'replayed' THEN 'replayed'
        WHEN 'stopped' THEN 'marked stopped'
        ELSE etype::text END;
BEGIN
    RAISE EXCEPTION 'job % is %; only % jobs can be %',
        j.id, j.state, array_to_string(allowed::text[], ' or '), verb
        USING ERRCODE = 'LG001';
END $$;

-- The hash of an event: sha256 of its job's previous hash (NULL for the
-- first) and everything the event says: the fixed-width fields in their
-- binary send form (the time as microseconds, whatever the session's time
-- zone), then the type, data and metadata as text (jsonb prints its keys in
-- one order) separated by U+001F, which JSON text cannot hold raw. Every
-- append computes it here and `ledger verify` recomputes it here, so the two
-- cannot disagree. One SQL expression, inlined into the set-based appends.
-- Cost: ~3 us an event here, half of it sha256()'s own set-up per call.
CREATE FUNCTION ledger.event_hash(
    prev bytea, job_id bigint, version int, type ledger.event_type, at timestamptz, data jsonb, metadata jsonb
) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(coalesce(prev, ''::bytea) || int8send(job_id) || int4send(version) || timestamptz_send(at)
                  || textsend(type::text || E'\x1f' || data::text || E'\x1f' || metadata::text))
$$;

-- fold(job, event) -> job: what one event does to the current-state row.
-- Pure (reads no table). Refuses an event that does not fit the job's state
-- or is not the next version. Used by every single-job command and by the
-- rebuild, so live projections and rebuilt ones share one definition.
CREATE FUNCTION ledger.fold(j ledger.jobs, e ledger.events)
RETURNS ledger.jobs LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF e.version <> coalesce(j.version, 0) + 1 THEN
        RAISE EXCEPTION 'job %: event version % does not follow version %',
            e.job_id, e.version, coalesce(j.version, 0) USING ERRCODE = 'LG002';
    END IF;
    IF e.type = 'enqueued' THEN
        j.id := e.job_id;
        j.kind := e.data->>'kind';
        j.queue := e.data->>'queue';
        j.priority := (e.data->>'priority')::smallint;
        j.args := e.data->'args';
        j.attempt := 0;
        j.max_attempts := (e.data->>'max_attempts')::int;
        j.run_at := (e.data->>'run_at')::timestamptz;
        j.state := CASE WHEN j.run_at <= e.at THEN 'available' ELSE 'scheduled' END;
        j.created_at := e.at;
        j.limit_key := e.data->>'limit_key';
        j.unique_key := e.data->>'unique_key';
        j.unique_states := (SELECT array_agg(x::ledger.job_state) FROM jsonb_array_elements_text(e.data->'unique_states') x);
    ELSIF e.type = 'started' THEN
        IF j.state NOT IN ('available', 'scheduled', 'retryable') THEN
            PERFORM ledger._refuse(j, e.type, '{available,scheduled,retryable}');
        END IF;
        j.state := 'running';
        j.attempt := j.attempt + 1;
        j.worker := e.data->>'worker';
        j.attempted_at := e.at;
    ELSIF e.type = 'succeeded' THEN
        IF j.state <> 'running' THEN PERFORM ledger._refuse(j, e.type, '{running}'); END IF;
        j.state := 'succeeded';
        j.finalized_at := e.at;
    ELSIF e.type = 'failed' THEN
        IF j.state <> 'running' THEN PERFORM ledger._refuse(j, e.type, '{running}'); END IF;
        IF j.attempt >= j.max_attempts THEN
            RAISE EXCEPTION 'job % has spent its % attempts; a failed last attempt is discarded, not retried',
                j.id, j.max_attempts USING ERRCODE = 'LG001';
        END IF;
        j.state := 'retryable';
        j.run_at := (e.data->>'run_at')::timestamptz;
        j.last_error := e.data->>'error';
    ELSIF e.type = 'discarded' THEN
        IF j.state <> 'running' THEN PERFORM ledger._refuse(j, e.type, '{running}'); END IF;
        j.state := 'discarded';
        j.last_error := e.data->>'error';
        j.finalized_at := e.at;
    ELSIF e.type = 'cancelled' THEN
        IF j.state NOT IN ('scheduled', 'available', 'retryable', 'running') THEN
            PERFORM ledger._refuse(j, e.type, '{scheduled,available,retryable,running}');
        END IF;
        j.state := 'cancelled';
        j.finalized_at := e.at;
    ELSIF e.type = 'snoozed' THEN
        IF j.state <> 'running' THEN PERFORM ledger._refuse(j, e.type, '{running}'); END IF;
        j.state := 'scheduled';
        j.run_at := (e.data->>'run_at')::timestamptz;
        j.max_attempts := j.max_attempts + 1;
    ELSIF e.type = 'rescued' THEN
        IF j.state <> 'running' THEN PERFORM ledger._refuse(j, e.type, '{running}'); END IF;
        j.last_error := e.data->>'error';
        IF (e.data->>'unrun')::boolean THEN
            -- A lost claim: the body never began, so the attempt its claim counted is given
            -- back (a job on its last attempt is not discarded for a reply that went missing).
            j.attempt := j.attempt - 1;
        END IF;
        IF j.attempt < j.max_attempts THEN
            j.state := 'retryable';
            j.run_at := e.at;
        ELSE
            j.state := 'discarded';
            j.finalized_at := e.at;
        END IF;
    ELSIF e.type = 'stopped' THEN
        IF j.state <> 'cancelled' THEN PERFORM ledger._refuse(j, e.type, '{cancelled}'); END IF;
    ELSIF e.type = 'replayed' THEN
        IF j.state NOT IN ('discarded', 'cancelled') THEN
            PERFORM ledger._refuse(j, e.type, '{discarded,cancelled}');
        END IF;
        j.state := 'available';
        j.attempt := 0;
        j.run_at := e.at;
        j.last_error := NULL;
        j.finalized_at := NULL;
    END IF;
    j.version := e.version;
    j.updated_at := e.at;
    j.head := e.hash;
    RETURN j;
END $$;

-- The dead-letter row of a discarded job: its identity plus the error of
-- every failed, discarded or rescued attempt since its last replay.
CREATE FUNCTION ledger.discarded_row(j ledger.jobs)
RETURNS ledger.discarded LANGUAGE sql STABLE AS $$
    SELECT j.id, j.kind, j.queue, j.args, j.attempt, j.max_attempts,
           coalesce(jsonb_agg(jsonb_build_object(
               'attempt', e.data->'attempt', 'error', e.data->'error', 'at', e.at)
               ORDER BY e.version), '[]'::jsonb),
           j.finalized_at
    FROM ledger.events e
    WHERE e.job_id = j.id
      AND e.type IN ('failed', 'discarded', 'rescued')
      AND e.version > (SELECT coalesce(max(r.version), 0) FROM ledger.events r
                       WHERE r.job_id = j.id AND r.type = 'replayed')
$$;

-- Lock one job's row for a command, checking existence and expected version.
CREATE FUNCTION ledger._job_for_update(job_id bigint, expected_version int)
RETURNS ledger.jobs LANGUAGE plpgsql AS $$
DECLARE
    j ledger.jobs;
BEGIN
    SELECT * INTO j FROM ledger.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % not found', job_id USING ERRCODE = 'LG003';
    END IF;
    IF expected_version IS NOT NULL AND j.version <> expected_version THEN
        RAISE EXCEPTION 'job % is at version %, not the expected version %; it changed since it was read',
            job_id, j.version, expected_version USING ERRCODE = 'LG002';
    END IF;
    RETURN j;
END $$;

-- Append one event to a locked job: fold first (so a refused event writes
-- nothing), then the event row, the current-state row, the dead-letter row,
-- and a NOTIFY when the job has become claimable now.
CREATE FUNCTION ledger._append(j ledger.jobs, job_id bigint, etype ledger.event_type, edata jsonb, emeta jsonb)
RETURNS ledger.jobs LANGUAGE plpgsql AS $$
DECLARE
    e ledger.events;
    n ledger.jobs;
BEGIN
    e.job_id := job_id;
    e.version := coalesce(j.version, 0) + 1;
    e.type := etype;
    e.at := now();
    e.data := edata;
    e.metadata := coalesce(emeta, '{}');
    e.hash := ledger.event_hash(j.head, e.job_id, e.version, e.type, e.at, e.data, e.metadata);
    n := ledger.fold(j, e);
    INSERT INTO ledger.events (job_id, version, type, at, data, metadata, hash)
    VALUES (e.job_id, e.version, e.type, e.at, e.data, e.metadata, e.hash);
    IF j.id IS NULL THEN
        INSERT INTO ledger.jobs VALUES (n.*);
    ELSE
        UPDATE ledger.jobs SET
            kind = n.kind, queue = n.queue, priority = n.priority, args = n.args,
            state = n.state, attempt = n.attempt, max_attempts = n.max_attempts,
            run_at = n.run_at, last_error = n.last_error, worker = n.worker,
            created_at = n.created_at, attempted_at = n.attempted_at,
            finalized_at = n.finalized_at, updated_at = n.updated_at, version = n.version, head = n.head
        WHERE id = n.id;
    END IF;
    IF n.state = 'discarded' THEN
        INSERT INTO ledger.discarded SELECT * FROM ledger.discarded_row(n);
    ELSIF j.state = 'discarded' THEN
        DELETE FROM ledger.discarded WHERE discarded.job_id = n.id;
    END IF;
    IF (n.state IN ('available', 'scheduled', 'retryable') AND n.run_at <= now())
       OR (j.state = 'running' AND n.limit_key IS NOT NULL) THEN  -- work, or a limit's slot, is free
        PERFORM pg_notify('ledger.' || n.queue, '');
    END IF;
    IF n.state IN ('succeeded', 'cancelled', 'discarded') AND j.state IS DISTINCT FROM n.state
       AND EXISTS (SELECT 1 FROM ledger.waiters w WHERE w.job_id = n.id) THEN
        PERFORM pg_notify('ledger:done', n.id::text);
    END IF;
    RETURN n;
END $$;

-- What is wrong with one job's enqueue options, or NULL if nothing is: the
-- one statement of the rules, with the LG004 message naming the field. One
-- SQL expression, so PostgreSQL inlines it into job_enqueue_many's
-- set-based check (a plpgsql call per row cost ~5 of ~24 ms per 1,000
-- jobs), and the messages are formatted only for a bad row. The lengths are
-- checked apart from the patterns: a bounded repeat ({0,99}) made each match
-- ~5x slower (2.8 against 0.6 us per row, measured here).
-- A queue name's rule, for the enqueue's check and for a pause: the message, or NULL.
CREATE FUNCTION ledger._queue_problem(queue text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN queue IS NULL OR length(queue) > 50 OR queue !~ '^[A-Za-z0-9_.:-]+$' THEN
        format('queue %s: must be 1-50 letters, digits, or _ . : -', quote_nullable(queue))
    END
$$;

CREATE FUNCTION ledger._enqueue_problem(kind text, args jsonb, queue text, priority int, max_attempts int)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN kind IS NULL OR length(kind) > 100 OR kind !~ '^[A-Za-z_][A-Za-z0-9_.:-]*$' THEN
            format('kind %s: must be 1-100 letters, digits, or _ . : - and start with a letter or _',
                   quote_nullable(kind))
        WHEN args IS NULL OR jsonb_typeof(args) <> 'object' THEN
            'args: must be a JSON object'
        WHEN ledger._queue_problem(queue) IS NOT NULL THEN ledger._queue_problem(queue)
        WHEN priority IS NULL OR priority NOT BETWEEN 0 AND 9 THEN
            format('priority %s: must be between 0 (first) and 9 (last)', coalesce(priority::text, '<NULL>'))
        WHEN max_attempts IS NULL OR max_attempts NOT BETWEEN 1 AND 1000 THEN
            format('max_attempts %s: must be between 1 and 1000', coalesce(max_attempts::text, '<NULL>'))
    END
$$;

-- The limit a new job of `kind` in `queue` with `args` counts against:
-- `<scope>|<key>`, the kind's limit before the queue's, or NULL.
CREATE FUNCTION ledger._limit_key(kind text, queue text, args jsonb)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT l.scope || '|' || coalesce(args #>> l.key_path, '')
    FROM ledger.limits l
    WHERE l.scope IN ('kind:' || kind, 'queue:' || queue)
    ORDER BY l.scope LIKE 'kind:%' DESC
    LIMIT 1
$$;

-- The `enqueued` event's data: the job as it was asked for, with the limit and
-- uniqueness it was given. Both enqueue functions build it here (inlined).
CREATE FUNCTION ledger._enqueued_data(
    kind text, queue text, priority int, args jsonb, max_attempts int, run_at timestamptz,
    limit_key text, unique_key text, unique_states ledger.job_state[]
) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('kind', kind, 'queue', queue, 'priority', priority, 'args', args,
                              'max_attempts', max_attempts, 'run_at', run_at)
           || CASE WHEN limit_key IS NULL THEN '{}' ELSE jsonb_build_object('limit_key', limit_key) END
           || CASE WHEN unique_key IS NULL THEN '{}'
                   ELSE jsonb_build_object('unique_key', unique_key, 'unique_states', to_jsonb(unique_states)) END
$$;

-- Enqueue many jobs in one statement (arrays of equal length; NULL run_at
-- means now). Returns (id, duplicate) in input order. All rows are checked
-- first, in one set-based pass (ledger._enqueue_problem), so one bad row
-- refuses the batch, with the first bad row's message, and nothing is written.
-- One NOTIFY per queue that received a job available now, however many jobs
-- the batch held. The insert is one statement (a per-row PERFORM loop before
-- it was 25% slower per 1,000 jobs), inside plpgsql so that its plan is
-- cached: a SQL-language function is planned on every call before
-- PostgreSQL 18, which held single enqueues at ~1,000/s against ~1,770/s
-- cached (measured here).
-- Unique jobs (unique_keys non-NULL): a job whose key (with its period's
-- bucket, when unique_periods gives one) matches a job in its
-- states (unique_state_lists, comma-separated) is not inserted; jobs_unique_idx decides,
-- so racing enqueues make one job. Its row comes back with duplicate = true
-- and the existing job's id, found in a statement of its own (one whose
-- snapshot sees a racer's row that committed meanwhile).
CREATE FUNCTION ledger.job_enqueue_many(
    kinds text[],
    args jsonb[],
    queues text[],
    priorities int[],
    max_attempts int[],
    run_ats timestamptz[],
    metadata jsonb DEFAULT '{}',
    unique_keys text[] DEFAULT NULL,
    unique_periods interval[] DEFAULT NULL,
    unique_state_lists text[] DEFAULT NULL
) RETURNS TABLE (id bigint, duplicate boolean) LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int := coalesce(cardinality(kinds), 0);
    upto bigint := (SELECT last_value FROM ledger.job_id_seq) + n;
    problem text;
    -- With no limit declared anywhere, no row looks one up (CASE short-circuits).
    limited boolean := EXISTS (SELECT 1 FROM ledger.limits);
    uniq boolean := unique_keys IS NOT NULL;
    ids bigint[];
    dups boolean[];
    keys text[];
BEGIN
    -- unnest would pad short arrays with NULLs.
    IF n <> coalesce(cardinality(args), 0) OR n <> coalesce(cardinality(queues), 0)
       OR n <> coalesce(cardinality(priorities), 0) OR n <> coalesce(cardinality(max_attempts), 0)
       OR n <> coalesce(cardinality(run_ats), 0)
       OR (uniq AND (n <> cardinality(unique_keys) OR n <> coalesce(cardinality(unique_periods), 0)
                     OR n <> coalesce(cardinality(unique_state_lists), 0))) THEN
        RAISE EXCEPTION 'job_enqueue_many: kinds, args, queues, priorities, max_attempts, run_ats (and the unique arrays) must have the same length'
            USING ERRCODE = 'LG004';
    END IF;
    -- A rule's states include every active one: a job moves among them without an enqueue,
    -- and one coming back into the rule could meet another job holding its key.
    IF uniq AND EXISTS (
        SELECT 1 FROM unnest(unique_keys, unique_state_lists) AS u(k, s)
        WHERE u.k IS NOT NULL
          AND NOT string_to_array(u.s, ',')::ledger.job_state[] @> '{available,scheduled,retryable,running}'
    ) THEN
        RAISE EXCEPTION 'unique states must include every active state (available, retryable, running, scheduled)'
            USING ERRCODE = 'LG004';
    END IF;
    SELECT c.problem INTO problem
    FROM (SELECT ledger._enqueue_problem(t.k, t.a, t.q, t.p, t.m) AS problem, t.ord
          FROM unnest(kinds, args, queues, priorities, max_attempts) WITH ORDINALITY AS t(k, a, q, p, m, ord)) AS c
    WHERE c.problem IS NOT NULL
    ORDER BY c.ord LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'LG004';
    END IF;
    -- One indexed read of a one-row table per call; the partition is made
    -- in the rare call that comes within a partition's size of the end.
    IF upto >= (SELECT p.covered_until - p.size FROM ledger.events_partitioning p WHERE p.id = 1) THEN
        PERFORM ledger.events_partitions_ensure(upto);
    END IF;
    WITH input AS MATERIALIZED (
        SELECT nextval('ledger.job_id_seq') AS id, t.k, t.a, t.q, t.p, t.m,
               coalesce(t.r, now()) AS r, t.ord,
               CASE WHEN limited THEN ledger._limit_key(t.k, t.q, t.a) END AS lk,
               CASE WHEN uniq AND unique_keys[t.ord] IS NOT NULL THEN
                   unique_keys[t.ord] || coalesce('|' || date_bin(unique_periods[t.ord], now(), timestamptz 'epoch')::text, '')
               END AS uk,
               CASE WHEN uniq AND unique_keys[t.ord] IS NOT NULL THEN
                   string_to_array(unique_state_lists[t.ord], ',')::ledger.job_state[]
               END AS us
        FROM unnest(kinds, args, queues, priorities, max_attempts, run_ats)
             WITH ORDINALITY AS t(k, a, q, p, m, r, ord)
        ORDER BY t.ord
    ), enqueued AS MATERIALIZED (
        SELECT i.*, ledger.event_hash(NULL, i.id, 1, 'enqueued', now(), i.d, i.meta) AS h
        FROM (SELECT input.*, coalesce(job_enqueue_many.metadata, '{}') AS meta,
                     ledger._enqueued_data(k, q, p, a, m, r, lk, uk, us) AS d
              FROM input) AS i
    -- Two inserts, one of which gets no rows: ON CONFLICT makes every row a
    -- speculative insertion (a token, and a WAL record to confirm it) even when
    -- the row is outside the partial index; a batch without unique keys wrote
    -- 49 more bytes of WAL a job and took ~5% longer (python -m bench.enqueue).
    ), plain_jobs AS (
        INSERT INTO ledger.jobs
        SELECT e.id, k, q, p, a,
               CASE WHEN r <= now() THEN 'available' ELSE 'scheduled' END::ledger.job_state,
               0, m, r, NULL, NULL, now(), NULL, NULL, now(), 1, h, lk, uk, us
        FROM enqueued e WHERE NOT uniq
        RETURNING ledger.jobs.id
    ), unique_jobs AS (
        INSERT INTO ledger.jobs
        SELECT e.id, k, q, p, a,
               CASE WHEN r <= now() THEN 'available' ELSE 'scheduled' END::ledger.job_state,
               0, m, r, NULL, NULL, now(), NULL, NULL, now(), 1, h, lk, uk, us
        FROM enqueued e WHERE uniq
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states) DO NOTHING
        RETURNING ledger.jobs.id
    ), new_jobs AS (
        SELECT plain_jobs.id FROM plain_jobs UNION ALL SELECT unique_jobs.id FROM unique_jobs
    ), new_events AS (
        INSERT INTO ledger.events (job_id, version, type, at, data, metadata, hash)
        SELECT e.id, 1, 'enqueued', now(), d, meta, h
        FROM enqueued e JOIN new_jobs j ON j.id = e.id
    ), notified AS (
        SELECT count(pg_notify('ledger.' || due.q, '')) AS n
        FROM (SELECT DISTINCT input.q FROM input JOIN new_jobs j ON j.id = input.id WHERE input.r <= now()) AS due
    )
    SELECT array_agg(input.id ORDER BY input.ord), array_agg(j.id IS NULL ORDER BY input.ord),
           array_agg(input.uk ORDER BY input.ord)
    INTO ids, dups, keys
    FROM input LEFT JOIN new_jobs j ON j.id = input.id, notified;
    IF uniq AND true = ANY (dups) THEN
        -- The jobs that hold the keys: the one in its unique states, else the latest with the key.
        SELECT array_agg(CASE WHEN x.dup THEN (
                   SELECT o.id FROM ledger.jobs o WHERE o.unique_key = x.key
                   ORDER BY o.state = ANY (o.unique_states) DESC, o.id DESC LIMIT 1) ELSE x.id END ORDER BY x.ord)
        INTO ids
        FROM unnest(ids, dups, keys) WITH ORDINALITY AS x(id, dup, key, ord);
    END IF;
    RETURN QUERY SELECT x.id, x.dup FROM unnest(ids, dups) WITH ORDINALITY AS x(id, dup, ord) ORDER BY x.ord;
END $$;

-- Enqueue one job without a uniqueness rule; returns its id. run_at NULL means
-- now. The same rules, event and NOTIFY as job_enqueue_many, as scalar
-- statements: a single job through the arrays' CTE cost ~30% more server time
-- (pgbench, one job per transaction: ~2,050 against ~2,700 tx/s here), and the
-- client sends scalars, which psycopg dumps in C (docs/design.md, "One job").
CREATE FUNCTION ledger.job_enqueue(
    kind text,
    args jsonb DEFAULT '{}',
    queue text DEFAULT 'default',
    priority int DEFAULT 5,
    max_attempts int DEFAULT 25,
    run_at timestamptz DEFAULT NULL,
    metadata jsonb DEFAULT '{}'
) RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text := ledger._enqueue_problem(kind, args, queue, priority, max_attempts);
    new_id bigint;
    due timestamptz := coalesce(run_at, now());
    lk text;
    data jsonb;
    meta jsonb := coalesce(metadata, '{}');
    h bytea;
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'LG004';
    END IF;
    new_id := nextval('ledger.job_id_seq');
    IF new_id >= (SELECT p.covered_until - p.size FROM ledger.events_partitioning p WHERE p.id = 1) THEN
        PERFORM ledger.events_partitions_ensure(new_id);
    END IF;
    -- _limit_key reads a table, so it is not inlined: a SQL function planned on
    -- every call, a quarter of this function's CPU (0.39 against 0.30 ms a
    -- call). With no limit declared anywhere it is not called, as in job_enqueue_many.
    IF EXISTS (SELECT 1 FROM ledger.limits) THEN
        lk := ledger._limit_key(kind, queue, args);
    END IF;
    data := ledger._enqueued_data(kind, queue, priority, args, max_attempts, due, lk, NULL, NULL);
    h := ledger.event_hash(NULL, new_id, 1, 'enqueued', now(), data, meta);
    INSERT INTO ledger.jobs
    VALUES (new_id, kind, queue, priority, args,
            CASE WHEN due <= now() THEN 'available' ELSE 'scheduled' END::ledger.job_state,
            0, max_attempts, due, NULL, NULL, now(), NULL, NULL, now(), 1, h, lk, NULL, NULL);
    INSERT INTO ledger.events (job_id, version, type, at, data, metadata, hash)
    VALUES (new_id, 1, 'enqueued', now(), data, meta, h);
    IF due <= now() THEN
        PERFORM pg_notify('ledger.' || queue, '');
    END IF;
    RETURN new_id;
END $$;

-- Record that a worker is alive for `lease` more. Its running jobs are safe
-- from rescue until expires_at. The lease has no default here: the caller's
-- (ledger/defaults.py, the worker's --lease) is the one that counts.
CREATE FUNCTION ledger.worker_heartbeat(worker text, lease interval, queues text[] DEFAULT NULL, kinds text[] DEFAULT NULL)
RETURNS timestamptz LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ledger.workers AS w (id, heartbeat_at, expires_at, queues, kinds)
    VALUES (worker, now(), now() + lease, queues, kinds)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), expires_at = now() + lease,
                                   queues = excluded.queues, kinds = excluded.kinds
    RETURNING expires_at
$$;

-- Available jobs that no live worker can run: (queue, kind, jobs, oldest
-- run_at) where no worker whose lease holds serves the queue with a handler
-- for the kind. They wait, untouched (the claim takes only kinds its worker
-- runs), until such a worker starts; /metrics and `ledger stats` show them.
CREATE FUNCTION ledger.kinds_unserved()
RETURNS TABLE (queue text, kind text, jobs bigint, oldest timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- Grouped first, then looked up once per (queue, kind): the lookup per job
    -- took 5.2 s against ~1 s for the count alone with 10M jobs due.
    SELECT g.queue, g.kind, g.jobs, g.oldest
    FROM (SELECT j.queue, j.kind, count(*) AS jobs, min(j.run_at) AS oldest
          FROM ledger.jobs j
          WHERE j.state IN ('available', 'scheduled', 'retryable') AND j.run_at <= now()
          GROUP BY j.queue, j.kind) AS g
    WHERE NOT EXISTS (SELECT 1 FROM ledger.workers w
                      WHERE w.expires_at > now() AND g.queue = ANY (w.queues)
                        AND (w.kinds IS NULL OR g.kind = ANY (w.kinds)))
    ORDER BY g.queue, g.kind
$$;

-- A worker leaving: drop its heartbeat so whatever it abandoned is rescued
-- at the next rescue pass rather than after the lease.
CREATE FUNCTION ledger.worker_stop(worker text)
RETURNS void LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ledger.workers WHERE id = worker
$$;

-- How many more jobs of limit key `key` may start now: the concurrency
-- left (its limit less its running jobs) and the rate left (its limit less
-- its starts in the last `per`), whichever is smaller. Called with the key's
-- advisory lock held, in a statement of its own, so it sees every claim of
-- the key that committed before the lock was granted. A limit since removed
-- is no limit.
CREATE FUNCTION ledger._limit_room(key text)
RETURNS int LANGUAGE sql STABLE AS $$
    SELECT coalesce(least(
        l.concurrency - (SELECT count(*) FROM ledger.jobs j WHERE j.limit_key = key AND j.state = 'running'),
        l.rate - (SELECT count(*) FROM ledger.limit_starts s, unnest(s.starts) AS t(at)
                  WHERE s.limit_key = key AND t.at > now() - l.per)
    ), 2147483647)::int
    FROM (SELECT NULL) AS one LEFT JOIN ledger.limits l ON l.scope = split_part(key, '|', 1)
$$;

-- The limited path of the claim: up to `n` due jobs of `queue`, in claim
-- order, skipping a job whose limit key has no room (its job waits, spends
-- no attempt, and holds up no other key). Each key met is locked
-- (pg_try_advisory_xact_lock, until the claim commits) before its room is
-- counted, so racing claims of one key take turns and no worker count or
-- race can exceed a limit; a key another claim holds is skipped like a
-- locked row (SKIP LOCKED's rule), so claims never wait on each other and
-- never deadlock. A pass that finds a key full asks again without it, so a
-- full key at the head of the queue does not starve the rest. The starts of
-- rate-limited keys are recorded here. Returns the chosen ids, locked;
-- job_claim claims exactly those.
CREATE FUNCTION ledger._claim_limited(queue text, n int, kinds text[])
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    taken bigint[] := '{}';
    full_keys text[] := '{}';
    room jsonb := '{}';  -- key -> room left in this claim
    r record;
    asked int;
    got int;
    filled boolean;
    left_ int;
BEGIN
    LOOP
        asked := n - cardinality(taken);
        got := 0;
        filled := false;
        FOR r IN
            SELECT j.id, j.limit_key FROM ledger.jobs j
            WHERE j.state IN ('available', 'scheduled', 'retryable')
              AND j.queue = _claim_limited.queue AND j.run_at <= now()
              AND (kinds IS NULL OR j.kind = ANY (kinds))
              AND NOT (j.id = ANY (taken))
              AND (j.limit_key IS NULL OR NOT (j.limit_key = ANY (full_keys)))
            ORDER BY j.priority, j.run_at, j.id
            LIMIT asked
            FOR UPDATE SKIP LOCKED
        LOOP
            got := got + 1;
            IF r.limit_key IS NOT NULL THEN
                IF NOT room ? r.limit_key THEN
                    -- Lock, then count in a statement of its own: its snapshot is taken
                    -- after the lock, so it sees the claim that held the key before us.
                    IF pg_try_advisory_xact_lock(hashtextextended(r.limit_key, 1835366)) THEN
                        room := room || jsonb_build_object(r.limit_key, ledger._limit_room(r.limit_key));
                    ELSE
                        room := room || jsonb_build_object(r.limit_key, 0);
                    END IF;
                END IF;
                left_ := (room ->> r.limit_key)::int;
                IF left_ <= 0 THEN
                    full_keys := full_keys || r.limit_key;
                    filled := true;
                    CONTINUE;
                END IF;
                room := room || jsonb_build_object(r.limit_key, left_ - 1);
            END IF;
            taken := taken || r.id;
        END LOOP;
        -- Done when n are taken, the queue ran out, or a pass skipped nothing.
        EXIT WHEN cardinality(taken) >= n OR got < asked OR NOT filled;
    END LOOP;
    -- The starts of rate-limited keys, newest last, `rate` of them kept.
    INSERT INTO ledger.limit_starts AS s (limit_key, starts)
    SELECT c.limit_key, array_fill(now(), ARRAY[c.k])
    FROM (SELECT j.limit_key, count(*)::int AS k FROM ledger.jobs j
          WHERE j.id = ANY (taken) AND j.limit_key IS NOT NULL GROUP BY j.limit_key) AS c
    JOIN ledger.limits l ON l.scope = split_part(c.limit_key, '|', 1) AND l.rate IS NOT NULL
    ON CONFLICT (limit_key) DO UPDATE
    SET starts = (SELECT array_agg(t.at ORDER BY t.at) FROM (
        SELECT u.at FROM unnest(s.starts || excluded.starts) AS u(at) ORDER BY u.at DESC
        LIMIT (SELECT l2.rate FROM ledger.limits l2 WHERE l2.scope = split_part(s.limit_key, '|', 1))) AS t);
    RETURN taken;
END $$;

-- Claim up to `n` due jobs of `queue` for `worker`, by priority then run
-- time. SKIP LOCKED lets many workers claim at once without waiting on each
-- other or taking the same row; each claimed job gets a `started` event.
-- A worker claiming for the first time gets a heartbeat row (its lease);
-- renewing it is the worker's heartbeat loop's job (ledger.worker_heartbeat),
-- not the claim's: two claims of one worker in flight would otherwise queue
-- on that row's lock until each commits (measured: it halved throughput).
-- One queue per call on purpose: `queue = $1` lets the scan walk
-- jobs_claim_idx in claim order and stop after n rows, where `queue =
-- ANY($1)` would read every claimable row and sort them (measured: 0.3 ms
-- against 11 ms with 1,800 jobs waiting). plpgsql, so its plans are cached.
-- `kinds` (NULL: any) are the kinds the worker has handlers for: a job of
-- another kind is stepped over, untouched and available, rather than
-- claimed and failed for want of code (ledger.kinds_unserved lists them).
-- Planned once per session, not per call (the `hot path` settings: see
-- ledger.job_succeed_many).
CREATE FUNCTION ledger.job_claim(
    queue text,
    n int,
    worker text,
    lease interval,
    metadata jsonb DEFAULT '{}',
    kinds text[] DEFAULT NULL
) RETURNS SETOF ledger.read_jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
    ids bigint[];  -- the limited path's choice; NULL: the first n due, as the index walks them
BEGIN
    INSERT INTO ledger.workers (id, heartbeat_at, expires_at) VALUES (worker, now(), now() + lease)
    ON CONFLICT (id) DO NOTHING;
    -- A paused queue gives nothing: a pause reaches every worker at its next claim.
    IF EXISTS (SELECT 1 FROM ledger.queue_state s WHERE s.queue = job_claim.queue AND s.paused) THEN
        RETURN;
    END IF;
    -- Limited jobs due in this queue: choose under the limits (two probes of
    -- near-empty indexes when there are none, so the limits cost nothing unused).
    IF EXISTS (SELECT 1 FROM ledger.jobs j
               WHERE j.limit_key IS NOT NULL AND j.state IN ('available', 'scheduled', 'retryable')
                 AND j.queue = job_claim.queue AND j.run_at <= now()) THEN
        ids := ledger._claim_limited(queue, n, kinds);
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT j.id, j.version + 1 AS v, j.head,
               jsonb_build_object('worker', job_claim.worker, 'attempt', j.attempt + 1) AS d
        FROM ledger.jobs j
        WHERE j.state IN ('available', 'scheduled', 'retryable')
          AND j.queue = job_claim.queue AND j.run_at <= now()
          AND (job_claim.kinds IS NULL OR j.kind = ANY (job_claim.kinds))
          -- A limited job only as the limited path chose it: one enqueued between the
          -- check above and this statement waits for the next claim (an overloaded
          -- machine showed this window let a claim take limited jobs unchecked).
          AND CASE WHEN ids IS NULL THEN j.limit_key IS NULL ELSE j.id = ANY (ids) END
        ORDER BY j.priority, j.run_at, j.id
        LIMIT n
        FOR UPDATE SKIP LOCKED
    ), started AS (
        SELECT p.id, p.v, p.d, ledger.event_hash(p.head, p.id, p.v, 'started', now(), p.d, m.meta) AS h, m.meta
        FROM picked p, (SELECT coalesce(job_claim.metadata, '{}') AS meta) AS m
    ), claimed AS (
        UPDATE ledger.jobs j
        SET state = 'running', attempt = j.attempt + 1, worker = job_claim.worker,
            attempted_at = now(), updated_at = now(), version = s.v, head = s.h
        FROM started s WHERE j.id = s.id
        RETURNING j.*
    ), appended AS (
        INSERT INTO ledger.events (job_id, version, type, at, data, metadata, hash)
        SELECT s.id, s.v, 'started', now(), s.d, s.meta, s.h
        FROM started s
    )
    SELECT c.id, c.kind, c.queue, c.priority, c.args, c.state, c.attempt, c.max_attempts, c.run_at,
           c.last_error, c.worker, c.created_at, c.attempted_at, c.finalized_at, c.updated_at, c.version,
           c.limit_key, c.unique_key
    FROM claimed c ORDER BY c.priority, c.run_at, c.id;
END $$;

-- The attempt succeeded.
-- The attempt succeeded; `result` (JSON, or NULL for none) is kept in the event.
CREATE FUNCTION ledger.job_succeed(
    job_id bigint, expected_version int DEFAULT NULL, metadata jsonb DEFAULT '{}', result jsonb DEFAULT NULL
) RETURNS ledger.jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j ledger.jobs := ledger._job_for_update(job_id, expected_version);
BEGIN
    RETURN ledger._append(j, j.id, 'succeeded',
        CASE WHEN result IS NULL THEN '{}' ELSE jsonb_build_object('result', result) END, metadata);
END $$;

-- Many attempts succeeded, in one statement: the worker's batch completer.
-- A job is recorded only if it is still running at the version its claim
-- returned; the others (cancelled or rescued meanwhile) are reported with
-- recorded = false and left alone. Rows are locked in id order, by the
-- UPDATE itself, so two batches never deadlock. Restates the `succeeded`
-- rule of ledger.fold() set-based for throughput; the rebuild check compares
-- the two.
-- The event metadata is built here from plain arrays (worker, run time and
-- pickup wait in ms): cheaper to send and parse than a JSON document per job.
-- The hot path's settings (here and on ledger.job_claim): plpgsql would
-- re-plan these statements on every call, because the generic plan, costed
-- for an unknown LIMIT n or array length, looks worse than a custom one, and
-- planning was a quarter of the server's CPU per cycle (perf, claims of 5).
-- Forced generic, with hash and merge joins off (and here sequential scans:
-- a plan made while the table was tiny must not scan it once it is large),
-- the one plan is index probes by id, right for the few rows a call touches
-- at any table size.
-- And no JIT: a generic plan is costed for a tenth of the table, so with a
-- backlog of millions its cost passed jit_above_cost and every claim spent
-- ~440 ms compiling what runs in 0.3 ms (auto_explain, 10M jobs available).
CREATE FUNCTION ledger.job_succeed_many(
    job_ids bigint[], expected_versions int[], worker text, duration_ms float8[], wait_ms float8[],
    results jsonb[] DEFAULT NULL
) RETURNS TABLE (job_id bigint, recorded boolean) LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_seqscan = off SET jit = off AS $$
BEGIN
    RETURN QUERY
    WITH input AS MATERIALIZED (
        SELECT t.id, t.v,
               jsonb_strip_nulls(jsonb_build_object('worker', worker, 'duration_ms', t.d, 'wait_ms', t.w)) AS m,
               CASE WHEN results[t.ord] IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('result', results[t.ord]) END AS r
        FROM unnest(job_ids, expected_versions, duration_ms, wait_ms) WITH ORDINALITY AS t(id, v, d, w, ord)
        ORDER BY t.id
    ), done AS (
        -- No SELECT ... FOR UPDATE first: the UPDATE locks each row it changes, and a
        -- row a cancel or a rescue changed meanwhile fails the recheck of its WHERE
        -- and is left out. The separate lock was one more WAL record per job (54 B of
        -- ~1,390, pg_waldump). SET reads the row it updates, so the hash chains from
        -- its current head. The one plan the settings leave: the input, sorted by id,
        -- probes jobs_pkey, so rows are locked in id order and two batches never
        -- deadlock. `state::text` keeps jobs_running_idx out of it: matching its
        -- predicate, that index was chosen whenever the statistics saw few running
        -- jobs, and each call then scanned every running job of every worker.
        UPDATE ledger.jobs j
        SET state = 'succeeded', finalized_at = now(), updated_at = now(), version = j.version + 1,
            head = ledger.event_hash(j.head, j.id, j.version + 1, 'succeeded', now(), i.r, i.m)
        FROM input i WHERE j.id = i.id AND j.state::text = 'running' AND j.version = i.v
        RETURNING j.id, j.version AS v, j.head AS h, j.queue, j.limit_key, i.m, i.r
    ), appended AS (
        INSERT INTO ledger.events (job_id, version, type, at, data, metadata, hash)
        SELECT d.id, d.v, 'succeeded', now(), d.r, d.m, d.h
        FROM done d
    ), freed AS (  -- a limit's slot is free: wake its queue's workers
        SELECT count(pg_notify('ledger.' || q.queue, '')) FROM (
            SELECT DISTINCT d.queue FROM done d WHERE d.limit_key IS NOT NULL) AS q
    ), told AS (  -- somebody waits for these (client.wait)
        SELECT count(pg_notify('ledger:done', w.job_id::text))
        FROM (SELECT DISTINCT wt.job_id FROM ledger.waiters wt JOIN done d ON d.id = wt.job_id) AS w
    )
    SELECT i.id, d.id IS NOT NULL FROM input i LEFT JOIN done d ON d.id = i.id;
END $$;

-- The attempt failed: retryable at retry_at while attempts remain, else
-- discarded into the dead-letter projection. discard => true gives up at
-- once (an error the job knows is permanent). The backoff is the caller's:
-- the worker passes the time ledger/retry_policy.py computes; NULL retries now.
CREATE FUNCTION ledger.job_fail(
    job_id bigint,
    error text,
    retry_at timestamptz DEFAULT NULL,
    discard boolean DEFAULT false,
    expected_version int DEFAULT NULL,
    metadata jsonb DEFAULT '{}'
) RETURNS ledger.jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j ledger.jobs := ledger._job_for_update(job_id, expected_version);
BEGIN
    IF discard OR j.attempt >= j.max_attempts THEN
        RETURN ledger._append(j, j.id, 'discarded',
            jsonb_build_object('error', error, 'attempt', j.attempt), metadata);
    END IF;
    RETURN ledger._append(j, j.id, 'failed',
        jsonb_build_object('error', error, 'attempt', j.attempt,
                           'run_at', coalesce(retry_at, now())),
        metadata);
END $$;

-- Stop a job that has not finished. A running job's worker is told at
-- once (NOTIFY on `ledger:cancel`, which no queue's channel can be, the
-- payload the job id): it cancels an async body and flags a sync one, then
-- records when and how the body stopped (ledger.job_stop). A worker that
-- missed the notification finds the cancel at its next heartbeat.
CREATE FUNCTION ledger.job_cancel(
    job_id bigint, reason text DEFAULT NULL, expected_version int DEFAULT NULL, metadata jsonb DEFAULT '{}'
) RETURNS ledger.jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j ledger.jobs := ledger._job_for_update(job_id, expected_version);
BEGIN
    IF j.state = 'running' THEN
        PERFORM pg_notify('ledger:cancel', j.id::text);
    END IF;
    RETURN ledger._append(j, j.id, 'cancelled', jsonb_build_object('reason', reason), metadata);
END $$;

-- The body of a job cancelled while it ran has ended: `how` it ended
-- (stopped on the cancel, or ran to its end anyway, succeeding or failing)
-- goes in the event, beside the worker and the time; the job stays
-- cancelled. expected_version is the cancel's (the claim's version + 1), so
-- a late report after a replay is refused.
CREATE FUNCTION ledger.job_stop(
    job_id bigint, how text, expected_version int DEFAULT NULL, metadata jsonb DEFAULT '{}'
) RETURNS ledger.jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j ledger.jobs := ledger._job_for_update(job_id, expected_version);
BEGIN
    RETURN ledger._append(j, j.id, 'stopped', jsonb_build_object('how', how, 'attempt', j.attempt), metadata);
END $$;

-- A running job asks to run again later without spending an attempt.
CREATE FUNCTION ledger.job_snooze(
    job_id bigint, run_at timestamptz, expected_version int DEFAULT NULL, metadata jsonb DEFAULT '{}'
) RETURNS ledger.jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j ledger.jobs := ledger._job_for_update(job_id, expected_version);
BEGIN
    IF run_at IS NULL THEN
        RAISE EXCEPTION 'run_at: a snooze needs a time to run again' USING ERRCODE = 'LG004';
    END IF;
    RETURN ledger._append(j, j.id, 'snoozed', jsonb_build_object('run_at', run_at), metadata);
END $$;

-- Put a discarded or cancelled job back to work with a fresh attempt
-- budget. The event records who asked and why; past events stay.
CREATE FUNCTION ledger.job_replay(
    job_id bigint, actor text DEFAULT NULL, reason text DEFAULT NULL,
    expected_version int DEFAULT NULL, metadata jsonb DEFAULT '{}'
) RETURNS ledger.jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j ledger.jobs := ledger._job_for_update(job_id, expected_version);
    holder bigint := ledger._unique_holder(j);
BEGIN
    IF holder IS NOT NULL THEN
        RAISE EXCEPTION 'job % cannot be replayed: job % holds its unique key %', j.id, holder, j.unique_key
            USING ERRCODE = 'LG001';
    END IF;
    RETURN ledger._append(j, j.id, 'replayed',
        jsonb_build_object('by', coalesce(actor, session_user::text), 'reason', reason), metadata);
END $$;

-- Return to work the running jobs whose worker's lease expired before
-- `as_of` (or that have no heartbeat row at all). job_ids narrows it to
-- those jobs. Each gets a `rescued` event naming the vanished worker, or
-- saying `reason` (a live worker's lost claim: worker/heartbeat.py); the
-- latter is marked `unrun` (its body never began), which gives its attempt back.
CREATE FUNCTION ledger.job_rescue(
    as_of timestamptz DEFAULT now(), job_ids bigint[] DEFAULT NULL, metadata jsonb DEFAULT '{}', reason text DEFAULT NULL
)
RETURNS SETOF ledger.jobs LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    j ledger.jobs;
BEGIN
    FOR r IN
        SELECT jb AS job, w.expires_at AS expired FROM ledger.jobs jb
        LEFT JOIN ledger.workers w ON w.id = jb.worker
        WHERE jb.state = 'running'
          AND (w.id IS NULL OR w.expires_at < as_of)
          AND (job_ids IS NULL OR jb.id = ANY (job_ids))
        ORDER BY jb.id
        FOR UPDATE OF jb SKIP LOCKED
    LOOP
        j := r.job;
        RETURN NEXT ledger._append(j, j.id, 'rescued', jsonb_build_object(
            'worker', j.worker, 'attempt', j.attempt,
            'error', CASE
                WHEN reason IS NOT NULL THEN reason
                WHEN r.expired IS NULL THEN format('worker %s vanished (no heartbeat on record)', j.worker)
                ELSE format('worker %s vanished (lease expired at %s)', j.worker, r.expired) END)
            || CASE WHEN reason IS NOT NULL THEN '{"unrun": true}'::jsonb ELSE '{}' END,
            metadata);
    END LOOP;
END $$;

-- Enqueue periodic job `name` if its period has come; returns the job id,
-- or NULL when the period's job was enqueued already (by any worker).
-- Periods are aligned to the epoch: with `every` = 1 minute, once per
-- wall-clock minute, however many workers call this.
CREATE FUNCTION ledger.periodic_enqueue(
    name text,
    every interval,
    kind text,
    args jsonb DEFAULT '{}',
    queue text DEFAULT 'default',
    priority int DEFAULT 5,
    max_attempts int DEFAULT 1
) RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job_id bigint;
BEGIN
    IF every IS NULL OR every < interval '1 second' THEN
        RAISE EXCEPTION 'every: a periodic job needs a period of at least one second' USING ERRCODE = 'LG004';
    END IF;
    INSERT INTO ledger.periodic AS p (name, every, next_run_at) VALUES (periodic_enqueue.name, periodic_enqueue.every, now())
    ON CONFLICT DO NOTHING;
    -- A new period (a redeploy with other settings) re-plans the next run, never later than planned.
    UPDATE ledger.periodic p
    SET every = periodic_enqueue.every,
        next_run_at = least(p.next_run_at, date_bin(periodic_enqueue.every, now(), timestamptz 'epoch') + periodic_enqueue.every)
    WHERE p.name = periodic_enqueue.name AND p.every <> periodic_enqueue.every;
    -- The row lock serialises racing workers; the loser re-reads next_run_at and finds the period taken.
    UPDATE ledger.periodic p
    SET next_run_at = date_bin(periodic_enqueue.every, now(), timestamptz 'epoch') + periodic_enqueue.every
    WHERE p.name = periodic_enqueue.name AND p.next_run_at <= now();
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    job_id := ledger.job_enqueue(kind, args, queue, priority, max_attempts, NULL, jsonb_build_object('periodic', periodic_enqueue.name));
    UPDATE ledger.periodic p SET last_job_id = job_id WHERE p.name = periodic_enqueue.name;
    RETURN job_id;
END $$;

-- Fold the completion events since the cursor into the histograms. One
-- caller at a time (advisory lock); events younger than `settle` wait for
-- the next call so that a transaction committing late is less likely to be
-- skipped (positions are assigned before commit, so a long transaction can
-- still commit below the cursor: the histograms are a close count, not exact).
CREATE FUNCTION ledger.metrics_refresh(settle interval DEFAULT '2 seconds')
RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    from_position bigint;
    to_position bigint;
    buckets float8[] := '{0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,300,Infinity}';
BEGIN
    PERFORM pg_advisory_xact_lock(1835364);
    SELECT position INTO from_position FROM ledger.metrics_cursor WHERE id = 1;
    SELECT coalesce(max(position), from_position) INTO to_position
    FROM ledger.events WHERE position > from_position AND at <= now() - settle;
    IF to_position <= from_position THEN
        RETURN 0;
    END IF;
    WITH done AS (
        SELECT j.kind,
               (e.metadata->>'wait_ms')::float8 / 1000 AS wait_s,
               (e.metadata->>'duration_ms')::float8 / 1000 AS run_s
        FROM ledger.events e JOIN ledger.jobs j ON j.id = e.job_id
        WHERE e.position > from_position AND e.position <= to_position
          AND e.type IN ('succeeded', 'failed', 'discarded', 'snoozed', 'cancelled')
          AND e.metadata ? 'duration_ms'
    ), samples AS (
        SELECT 'wait' AS metric, kind, wait_s AS v FROM done WHERE wait_s IS NOT NULL
        UNION ALL
        SELECT 'run', kind, run_s FROM done
    )
    INSERT INTO ledger.metrics_histogram AS h (metric, kind, le, count, sum)
    SELECT s.metric, s.kind, b.le, count(*) FILTER (WHERE s.v <= b.le), CASE WHEN b.le = 'Infinity' THEN sum(s.v) ELSE 0 END
    FROM samples s CROSS JOIN unnest(buckets) AS b(le)
    GROUP BY s.metric, s.kind, b.le
    ON CONFLICT (metric, kind, le) DO UPDATE SET count = h.count + excluded.count, sum = h.sum + excluded.sum;
    UPDATE ledger.metrics_cursor SET position = to_position WHERE id = 1;
    RETURN to_position - from_position;
END $$;

-- Jobs per state and queue, cheap with millions of jobs: the states a job
-- passes through are counted exactly (their rows are the backlog, found
-- through the partial indexes). The finished states grow without bound: below
-- 100k jobs (or before the table has statistics) they are counted exactly
-- too; above, estimated from the planner's statistics (exact = false,
-- queue '*').
CREATE FUNCTION ledger.job_counts()
RETURNS TABLE (state ledger.job_state, queue text, count bigint, exact boolean)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rows_estimate float8 := (SELECT reltuples FROM pg_class WHERE oid = 'ledger.jobs'::regclass);
BEGIN
    IF rows_estimate < 100000 THEN
        RETURN QUERY SELECT j.state, j.queue, count(*), true FROM ledger.jobs j GROUP BY 1, 2 ORDER BY 1, 2;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT j.state, j.queue, count(*), true FROM ledger.jobs j
    WHERE j.state IN ('available', 'scheduled', 'retryable')  -- jobs_claim_idx
    GROUP BY j.state, j.queue
    UNION ALL
    SELECT j.state, j.queue, count(*), true FROM ledger.jobs j
    WHERE j.state = 'running'  -- jobs_running_idx
    GROUP BY j.state, j.queue
    UNION ALL
    SELECT v.state::ledger.job_state, '*', round(rows_estimate * v.freq)::bigint, false
    FROM (SELECT unnest(s.most_common_vals::text::text[]) AS state, unnest(s.most_common_freqs) AS freq
          FROM pg_stats s WHERE s.schemaname = 'ledger' AND s.tablename = 'jobs' AND s.attname = 'state') v
    WHERE v.state IN ('succeeded', 'cancelled', 'discarded')
    ORDER BY 1, 2;
END $$;

-- Fold every job's events from scratch. What the projections must equal.
CREATE FUNCTION ledger.jobs_folded()
RETURNS SETOF ledger.jobs LANGUAGE plpgsql STABLE AS $$
DECLARE
    e ledger.events;
    j ledger.jobs;
BEGIN
    FOR e IN SELECT * FROM ledger.events ORDER BY job_id, version LOOP
        IF j.id IS DISTINCT FROM e.job_id THEN
            IF j.id IS NOT NULL THEN
                RETURN NEXT j;
            END IF;
            j := NULL;
        END IF;
        j := ledger.fold(j, e);
    END LOOP;
    IF j.id IS NOT NULL THEN
        RETURN NEXT j;
    END IF;
END $$;

-- Rows where a projection differs from the fold of the events:
-- (projection, id, live row, rebuilt row). Empty means consistent.
CREATE FUNCTION ledger.projections_diff()
RETURNS TABLE (projection text, job_id bigint, live jsonb, rebuilt jsonb)
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH folded AS MATERIALIZED (SELECT * FROM ledger.jobs_folded()),
    dead AS (SELECT d.* FROM folded f, LATERAL ledger.discarded_row(f) d WHERE f.state = 'discarded')
    SELECT 'jobs', coalesce(l.id, f.id), to_jsonb(l), to_jsonb(f)
    FROM ledger.jobs l FULL JOIN folded f ON f.id = l.id
    WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(f)
    UNION ALL
    SELECT 'discarded', coalesce(l.job_id, d.job_id), to_jsonb(l), to_jsonb(d)
    FROM ledger.discarded l FULL JOIN dead d ON d.job_id = l.job_id
    WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(d)
    ORDER BY 1, 2
$$;

-- Replace both projections with the fold of the events. Returns the number
-- of jobs rebuilt. Takes exclusive locks: nothing else writes meanwhile.
CREATE FUNCTION ledger.projections_rebuild()
RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE ledger.events IN SHARE MODE;
    LOCK TABLE ledger.jobs, ledger.discarded IN ACCESS EXCLUSIVE MODE;
    DELETE FROM ledger.discarded;
    DELETE FROM ledger.jobs;
    INSERT INTO ledger.jobs SELECT * FROM ledger.jobs_folded();
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO ledger.discarded
    SELECT d.* FROM ledger.jobs j, LATERAL ledger.discarded_row(j) d WHERE j.state = 'discarded';
    RETURN n;
END $$;

-- Every place a job's history disagrees with its hash chain or its head:
-- (job_id, version, problem); empty means untouched. Recomputes each
-- event's hash from its content and the previous event's stored hash
-- (ledger.event_hash), checks versions run 1..n without a gap, and that the
-- current-state row's version and head are the last event's. It finds an
-- event changed, removed or inserted behind the triggers' back, and a lost
-- head; it cannot find a whole history removed together with its
-- current-state row, nor a chain an editor recomputed to its end together
-- with the head (docs/guarantees.md says so).
CREATE FUNCTION ledger.events_verify()
RETURNS TABLE (job_id bigint, version int, problem text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH chain AS (
        SELECT e.job_id, e.version, e.hash,
               lag(e.version) OVER w AS prev_version,
               ledger.event_hash(lag(e.hash) OVER w, e.job_id, e.version, e.type, e.at, e.data, e.metadata) AS expected,
               row_number() OVER (PARTITION BY e.job_id ORDER BY e.version DESC) AS from_end
        FROM ledger.events e
        WINDOW w AS (PARTITION BY e.job_id ORDER BY e.version)
    )
    SELECT c.job_id, c.version, CASE
        WHEN coalesce(c.prev_version, 0) <> c.version - 1
            THEN format('event(s) v%s..v%s are missing', coalesce(c.prev_version, 0) + 1, c.version - 1)
        ELSE format('event v%s does not match its hash chain: it, or the one before it, was changed or inserted',
                    c.version)
        END
    FROM chain c
    WHERE coalesce(c.prev_version, 0) <> c.version - 1 OR c.hash <> c.expected
    UNION ALL
    SELECT coalesce(j.id, h.job_id), h.version, CASE
        WHEN j.id IS NULL THEN 'a history without a current-state row'
        WHEN h.job_id IS NULL THEN 'a current-state row without any history'
        WHEN j.version <> h.version
            THEN format('the current state is at v%s but the history ends at v%s', j.version, h.version)
        ELSE format('the head of the current state is not the hash of the last event v%s', h.version)
        END
    FROM ledger.jobs j FULL JOIN (SELECT * FROM chain WHERE from_end = 1) h ON h.job_id = j.id
    WHERE j.id IS NULL OR h.job_id IS NULL OR j.version <> h.version OR j.head <> h.hash
    ORDER BY 1, 2
$$;

-- Events appended so far: the identity's last value, O(1), where
-- max(position) would scan (position has only a BRIN index).
CREATE FUNCTION ledger.events_appended()
RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.last_value FROM pg_sequences s
                     WHERE s.schemaname = 'ledger' AND s.sequencename = 'events_position_seq'), 0)
$$;

-- Apply the privileges: PUBLIC may call no ledger function (PostgreSQL
-- grants EXECUTE to PUBLIC by default, and the API functions run as the
-- owner), the `app` roles of ledger.roles may call the API and read the
-- views, the `readonly` ones may read. Nobody but the owner holds a table
-- privilege, so history changes only through the functions (invariant 8).
-- Run by `ledger migrate` at the end of every schema application (grants
-- die with the functions an upgrade re-creates) and by `ledger roles`.
CREATE FUNCTION ledger.grants_apply()
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    api text[] := ARRAY['job_enqueue_many', 'job_enqueue', 'job_claim', 'job_succeed', 'job_succeed_many',
                        'job_fail', 'job_cancel', 'job_stop', 'job_snooze', 'job_replay', 'job_rescue',
                        'periodic_enqueue', 'worker_heartbeat', 'worker_stop', 'events_prune_partition',
                        'queue_set_paused', 'limit_set', 'limit_clear', 'job_progress_set',
                        'job_wait_begin', 'job_wait_end',
                        'schedule_declare', 'schedule_fire', 'schedule_set_paused',
                        'jobs_replay_bulk', 'jobs_cancel_bulk'];
    -- Reads, and the web app's own state (sessions, the sign-in throttle), which a
    -- dashboard served by the read-only role needs too; neither touches a job.
    reads text[] := ARRAY['job_counts', 'kinds_unserved', 'projections_diff', 'metrics_refresh', 'events_appended',
                          'events_verify', 'jobs_find', 'discarded_find', 'discarded_count', 'throughput_refresh',
                          'web_session_start', 'web_session_check', 'web_session_end',
                          'web_auth_wait', 'web_auth_fail', 'web_auth_forgive'];
    views text[] := ARRAY['read_jobs', 'read_events', 'read_discarded', 'read_metrics', 'read_partitions',
                          'read_schema_versions', 'read_queue_events', 'read_queue_state', 'read_limits',
                          'read_progress',
                          'read_schedules', 'read_schedule_events', 'read_bulk_actions', 'read_throughput'];
    r ledger.roles;
    f regprocedure;
    v text;
BEGIN
    REVOKE ALL ON SCHEMA ledger FROM PUBLIC;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'ledger'::regnamespace LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR r IN SELECT * FROM ledger.roles ORDER BY name LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name);
        EXECUTE format('GRANT USAGE ON SCHEMA ledger TO %I', r.name);
        FOREACH v IN ARRAY views LOOP
            EXECUTE format('GRANT SELECT ON ledger.%I TO %I', v, r.name);
        END LOOP;
        FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
                 WHERE p.pronamespace = 'ledger'::regnamespace
                   AND p.proname = ANY (CASE WHEN r.access = 'app' THEN api || reads ELSE reads END) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, r.name);
        END LOOP;
    END LOOP;
END $$;

-- History is append-only: refuse UPDATE, DELETE and TRUNCATE on events.
CREATE FUNCTION ledger._events_append_only()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.% is append-only: % is refused; history is never rewritten', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'LG005',
              HINT = 'change a job through the ledger.job_* functions, which append events';
END $$;

-- ---------------------------------------------------------------- flow control

-- Pause (paused => true) or resume a queue: one queue_events row saying who
-- and why, and the queue_state the claim reads. Running jobs finish; no
-- worker claims the queue from its next claim on; enqueueing still works. A
-- resume wakes the queue's workers. Pausing a paused queue records the new
-- reason (and who); resuming a running one is refused.
CREATE FUNCTION ledger.queue_set_paused(queue text, paused boolean, actor text DEFAULT NULL, reason text DEFAULT NULL)
RETURNS ledger.queue_state LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q ledger.queue_state;
BEGIN
    IF ledger._queue_problem(queue) IS NOT NULL THEN
        RAISE EXCEPTION '%', ledger._queue_problem(queue) USING ERRCODE = 'LG004';
    END IF;
    SELECT * INTO q FROM ledger.queue_state s WHERE s.queue = queue_set_paused.queue FOR UPDATE;
    IF NOT paused AND NOT coalesce(q.paused, false) THEN
        RAISE EXCEPTION 'queue % is not paused; only a paused queue can be resumed', queue USING ERRCODE = 'LG001';
    END IF;
    INSERT INTO ledger.queue_events (queue, type, by, reason)
    VALUES (queue, CASE WHEN paused THEN 'paused' ELSE 'resumed' END, coalesce(actor, session_user::text), reason);
    INSERT INTO ledger.queue_state AS s (queue, paused, changed_at, changed_by, reason)
    VALUES (queue, paused, now(), coalesce(actor, session_user::text), reason)
    ON CONFLICT ON CONSTRAINT queue_state_pkey DO UPDATE
    SET paused = excluded.paused, changed_at = excluded.changed_at, changed_by = excluded.changed_by,
        reason = excluded.reason
    RETURNING * INTO q;
    IF NOT paused THEN
        PERFORM pg_notify('ledger.' || queue, '');
    END IF;
    RETURN q;
END $$;

-- Declare (or change) the limit of a scope (`kind:<kind>` or
-- `queue:<queue>`): at most `concurrency` running at once and/or `rate`
-- starts per `per`, per key (the args value at key_path; NULL: one key).
-- It applies to jobs enqueued from now on; the claim enforces it. Workers
-- declare their kinds' limits at start; operators may set any scope's.
CREATE FUNCTION ledger.limit_set(
    scope text, concurrency int DEFAULT NULL, rate int DEFAULT NULL, per interval DEFAULT NULL,
    key_path text[] DEFAULT NULL
) RETURNS ledger.limits LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    l ledger.limits;
BEGIN
    IF scope IS NULL OR scope !~ '^(kind|queue):[A-Za-z0-9_.:-]+$' THEN
        RAISE EXCEPTION 'scope %: must be kind:<kind> or queue:<queue>', quote_nullable(scope) USING ERRCODE = 'LG004';
    ELSIF concurrency IS NULL AND rate IS NULL THEN
        RAISE EXCEPTION 'concurrency: a limit needs a concurrency, a rate, or both' USING ERRCODE = 'LG004';
    ELSIF concurrency < 1 THEN
        RAISE EXCEPTION 'concurrency %: must be at least 1', concurrency USING ERRCODE = 'LG004';
    ELSIF rate < 1 OR (rate IS NULL) <> (per IS NULL) OR per <= interval '0' THEN
        RAISE EXCEPTION 'rate: give a rate of at least 1 with a period longer than zero (60 per 1 minute)'
            USING ERRCODE = 'LG004';
    END IF;
    INSERT INTO ledger.limits AS x (scope, concurrency, rate, per, key_path, updated_at)
    VALUES (scope, concurrency, rate, per, key_path, now())
    ON CONFLICT ON CONSTRAINT limits_pkey DO UPDATE
    SET concurrency = excluded.concurrency, rate = excluded.rate, per = excluded.per,
        key_path = excluded.key_path, updated_at = now()
    RETURNING * INTO l;
    RETURN l;
END $$;

-- Remove a scope's limit: its jobs keep their key but nothing holds them
-- back (ledger._limit_room finds no limit). True when there was one.
CREATE FUNCTION ledger.limit_clear(scope text)
RETURNS boolean LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH gone AS (DELETE FROM ledger.limits l WHERE l.scope = limit_clear.scope RETURNING 1)
    SELECT count(*) > 0 FROM gone
$$;

-- ---------------------------------------------------------------- results, progress and waiting

-- The latest progress of a running attempt (`ctx.progress(...)` in a handler);
-- false, and nothing kept, when the attempt is no longer running (it ended,
-- or it was cancelled or rescued meanwhile).
CREATE FUNCTION ledger.job_progress_set(job_id bigint, attempt int, value jsonb)
RETURNS boolean LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ledger.progress AS p (job_id, attempt, at, value)
    SELECT j.id, j.attempt, now(), job_progress_set.value FROM ledger.jobs j
    WHERE j.id = job_progress_set.job_id AND j.state = 'running' AND j.attempt = job_progress_set.attempt
    ON CONFLICT ON CONSTRAINT progress_pkey DO UPDATE SET attempt = excluded.attempt, at = excluded.at, value = excluded.value
    RETURNING true
$$;

-- Begin waiting for `job_id` (the caller LISTENs on `ledger:done` first),
-- and sweep waiters older than a day (a client that died while waiting).
CREATE FUNCTION ledger.job_wait_begin(job_id bigint)
RETURNS void LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ledger.waiters w WHERE w.since < now() - interval '1 day';
    INSERT INTO ledger.waiters (job_id) VALUES (job_wait_begin.job_id);
$$;

CREATE FUNCTION ledger.job_wait_end(job_id bigint)
RETURNS void LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ledger.waiters w
    WHERE w.ctid = (SELECT w2.ctid FROM ledger.waiters w2 WHERE w2.job_id = job_wait_end.job_id LIMIT 1);
$$;

-- ---------------------------------------------------------------- schedules

CREATE VIEW ledger.read_schedules AS
    SELECT name, cron, timezone, kind, args, queue, priority, max_attempts, missed, grace, next_run_at,
           last_slot, last_job_id, declared_at, paused, changed_at, changed_by, reason
    FROM ledger.schedules;

CREATE VIEW ledger.read_schedule_events AS
    SELECT position, schedule, type, at, by, reason, data FROM ledger.schedule_events;

-- Declare schedule `name` (a worker does, at start, for each schedule its app
-- registers; ledger/cron.py has checked the expression and the zone). A new
-- schedule counts slots from now; a changed expression or zone re-plans from
-- now (the old expression's slots are not caught up); the same definition
-- again changes nothing. A pause survives a re-declaration. Each new
-- definition is one `declared` event.
CREATE FUNCTION ledger.schedule_declare(
    name text,
    cron text,
    timezone text,
    kind text,
    args jsonb DEFAULT '{}',
    queue text DEFAULT 'default',
    priority int DEFAULT 5,
    max_attempts int DEFAULT 1,
    missed text DEFAULT 'skip',
    grace interval DEFAULT '1 minute'
) RETURNS ledger.read_schedules LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old ledger.schedules;
    problem text := ledger._enqueue_problem(kind, args, queue, priority, max_attempts);
    definition jsonb := jsonb_build_object('cron', cron, 'timezone', timezone, 'kind', kind, 'args', args,
        'queue', queue, 'priority', priority, 'max_attempts', max_attempts, 'missed', missed, 'grace', grace);
BEGIN
    IF name IS NULL OR length(name) > 100 OR name !~ '^[A-Za-z0-9_.:-]+$' THEN
        RAISE EXCEPTION 'name %: must be 1-100 letters, digits, or _ . : -', quote_nullable(name) USING ERRCODE = 'LG004';
    ELSIF cron IS NULL OR length(cron) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'cron: a schedule needs a cron expression' USING ERRCODE = 'LG004';
    ELSIF timezone IS NULL OR length(timezone) NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'timezone: a schedule needs an IANA time zone' USING ERRCODE = 'LG004';
    ELSIF missed IS NULL OR missed NOT IN ('skip', 'once') THEN
        RAISE EXCEPTION 'missed %: must be skip or once', quote_nullable(missed) USING ERRCODE = 'LG004';
    ELSIF grace IS NULL OR grace < interval '0' THEN
        RAISE EXCEPTION 'grace: must not be negative' USING ERRCODE = 'LG004';
    ELSIF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'LG004';
    END IF;
    SELECT * INTO old FROM ledger.schedules s WHERE s.name = schedule_declare.name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO ledger.schedules (name, cron, timezone, kind, args, queue, priority, max_attempts, missed, grace,
                                      next_run_at, declared_at)
        VALUES (name, cron, timezone, kind, args, queue, priority, max_attempts, missed, grace, now(), now());
    ELSIF (old.cron, old.timezone, old.kind, old.args, old.queue, old.priority, old.max_attempts, old.missed, old.grace)
          IS DISTINCT FROM (cron, timezone, kind, args, queue, priority, max_attempts, missed, grace) THEN
        UPDATE ledger.schedules s
        SET cron = schedule_declare.cron, timezone = schedule_declare.timezone, kind = schedule_declare.kind,
            args = schedule_declare.args, queue = schedule_declare.queue, priority = schedule_declare.priority,
            max_attempts = schedule_declare.max_attempts, missed = schedule_declare.missed,
            grace = schedule_declare.grace, declared_at = now(),
            next_run_at = CASE WHEN (old.cron, old.timezone) = (schedule_declare.cron, schedule_declare.timezone)
                               THEN s.next_run_at ELSE now() END
        WHERE s.name = schedule_declare.name;
    ELSE
        RETURN (SELECT r FROM ledger.read_schedules r WHERE r.name = schedule_declare.name);
    END IF;
    INSERT INTO ledger.schedule_events (schedule, type, by, data)
    VALUES (name, 'declared', session_user::text, definition);
    RETURN (SELECT r FROM ledger.read_schedules r WHERE r.name = schedule_declare.name);
END $$;

-- The compare-and-set that admits one worker per slot. If schedule `name` is
-- still planned for `expected` (its next_run_at as the caller read it), with
-- the caller's expression and zone, and is not paused: move next_run_at to
-- `following`, enqueue the schedule's job for `slot` (NULL: nothing due,
-- only the plan moves on), and record the slots `missed` since `expected`.
-- Racing workers wait on the row lock; the later ones then find next_run_at
-- moved and get taken = false, so each slot is enqueued once however many
-- workers tick. A worker whose expression or zone differs from the declared
-- one (an old worker during a deploy) never takes the slot. The job carries
-- `{"schedule": name, "slot": slot}` in its enqueued event's metadata.
CREATE FUNCTION ledger.schedule_fire(
    name text,
    cron text,
    timezone text,
    expected timestamptz,
    following timestamptz,
    slot timestamptz DEFAULT NULL,
    missed int DEFAULT 0,
    first_missed timestamptz DEFAULT NULL,
    last_missed timestamptz DEFAULT NULL
) RETURNS TABLE (taken boolean, job_id bigint) LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ledger.schedules;
    job bigint;
BEGIN
    IF expected IS NULL OR coalesce(following, 'infinity') <= expected OR slot < expected OR slot > now()
       OR coalesce(missed, -1) < 0 THEN
        RAISE EXCEPTION 'schedule_fire: a slot between expected and now, a following slot after expected, missed >= 0'
            USING ERRCODE = 'LG004';
    END IF;
    UPDATE ledger.schedules x
    SET next_run_at = coalesce(following, 'infinity'), last_slot = coalesce(slot, x.last_slot)
    WHERE x.name = schedule_fire.name AND x.next_run_at = expected AND NOT x.paused
      AND x.cron = schedule_fire.cron AND x.timezone = schedule_fire.timezone
    RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint;
        RETURN;
    END IF;
    IF missed > 0 THEN
        INSERT INTO ledger.schedule_events (schedule, type, data)
        VALUES (name, 'missed', jsonb_build_object('slots', missed, 'first', first_missed, 'last', last_missed,
                                                   'policy', s.missed, 'ran_for', slot));
    END IF;
    IF slot IS NOT NULL THEN
        job := ledger.job_enqueue(s.kind, s.args, s.queue, s.priority, s.max_attempts, NULL,
            jsonb_build_object('schedule', name, 'slot', slot)
            || CASE WHEN missed > 0 THEN jsonb_build_object('missed', missed) ELSE '{}' END);
        UPDATE ledger.schedules x SET last_job_id = job WHERE x.name = schedule_fire.name;
    END IF;
    RETURN QUERY SELECT true, job;
END $$;

-- Pause (paused => true) or resume schedule `name`, recorded with who and
-- why. A paused schedule's slots pass without a job; a resume counts slots
-- from the resume on (the paused ones are not caught up, whatever `missed`
-- says: they were not missed, they were refused). Pausing a paused schedule
-- records the new reason; resuming one that runs is refused.
CREATE FUNCTION ledger.schedule_set_paused(name text, paused boolean, actor text DEFAULT NULL, reason text DEFAULT NULL)
RETURNS ledger.read_schedules LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ledger.schedules;
BEGIN
    IF paused IS NULL THEN
        RAISE EXCEPTION 'paused: say whether to pause or resume' USING ERRCODE = 'LG004';
    END IF;
    SELECT * INTO s FROM ledger.schedules x WHERE x.name = schedule_set_paused.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'schedule % not found; workers declare the schedules their app registers (`ledger schedules` lists them)',
            quote_nullable(name) USING ERRCODE = 'LG006';
    END IF;
    IF NOT paused AND NOT s.paused THEN
        RAISE EXCEPTION 'schedule % is not paused; only a paused schedule can be resumed', name USING ERRCODE = 'LG001';
    END IF;
    UPDATE ledger.schedules x
    SET paused = schedule_set_paused.paused, changed_at = now(), changed_by = coalesce(actor, session_user::text),
        reason = schedule_set_paused.reason,
        next_run_at = CASE WHEN schedule_set_paused.paused THEN x.next_run_at ELSE greatest(x.next_run_at, now()) END
    WHERE x.name = schedule_set_paused.name;
    INSERT INTO ledger.schedule_events (schedule, type, by, reason)
    VALUES (name, CASE WHEN paused THEN 'paused' ELSE 'resumed' END, coalesce(actor, session_user::text), reason);
    RETURN (SELECT r FROM ledger.read_schedules r WHERE r.name = schedule_set_paused.name);
END $$;

-- ---------------------------------------------------------------- bulk actions

CREATE VIEW ledger.read_bulk_actions AS
    SELECT batch, action, filters, at, by, via, reason FROM ledger.bulk_actions;

-- Whether job `j` matches an operator's filter: its kind, its queue, ended
-- (or, unfinished, enqueued) since `since`, its last error containing
-- `error_like`, its args or its last error containing `search` (both case
-- blind, plain text: no wildcards). NULL matches anything. The one
-- statement of the filter, for the listings (jobs_find, discarded_find) and
-- the bulk actions alike; one SQL expression, which PostgreSQL inlines.
CREATE FUNCTION ledger._job_matches(
    j ledger.jobs, kind text, queue text, since timestamptz, error_like text, search text
) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT (_job_matches.kind IS NULL OR j.kind = _job_matches.kind)
       AND (_job_matches.queue IS NULL OR j.queue = _job_matches.queue)
       AND (_job_matches.since IS NULL OR coalesce(j.finalized_at, j.created_at) >= _job_matches.since)
       AND (_job_matches.error_like IS NULL
            OR strpos(lower(coalesce(j.last_error, '')), lower(_job_matches.error_like)) > 0)
       AND (_job_matches.search IS NULL
            OR strpos(lower(j.args::text), lower(_job_matches.search)) > 0
            OR strpos(lower(coalesce(j.last_error, '')), lower(_job_matches.search)) > 0)
$$;

-- The ids of jobs newest first, filtered (ledger._job_matches, and a
-- state); keyset pages: pass the last id seen as `before`. Ids only: the
-- caller reads the rows through ledger.read_jobs (ROWS 50: a page, so its
-- planner joins them by primary key rather than hashing the whole view).
-- plpgsql, so the plan is cached and made for the filters given (a SQL
-- function's was generic: 4x slower for `ledger failed`, measured). With a search, the walk
-- down the primary key reads jobs until a page is full: fast while matches
-- are common, a scan of the table when none matches.
CREATE FUNCTION ledger.jobs_find(
    state ledger.job_state DEFAULT NULL, kind text DEFAULT NULL, queue text DEFAULT NULL,
    since timestamptz DEFAULT NULL, error_like text DEFAULT NULL, search text DEFAULT NULL,
    before bigint DEFAULT NULL, lim int DEFAULT 50
) RETURNS TABLE (id bigint) LANGUAGE plpgsql STABLE ROWS 50
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT j.id FROM ledger.jobs j
    WHERE (jobs_find.state IS NULL OR j.state = jobs_find.state)
      AND (jobs_find.before IS NULL OR j.id < jobs_find.before)
      AND ledger._job_matches(j, jobs_find.kind, jobs_find.queue, jobs_find.since,
                              jobs_find.error_like, jobs_find.search)
    ORDER BY j.id DESC
    LIMIT jobs_find.lim;
END $$;

-- The ids of dead letters newest first, filtered as jobs_find's are.
CREATE FUNCTION ledger.discarded_find(
    kind text DEFAULT NULL, queue text DEFAULT NULL, since timestamptz DEFAULT NULL,
    error_like text DEFAULT NULL, search text DEFAULT NULL, lim int DEFAULT 50
) RETURNS TABLE (job_id bigint) LANGUAGE plpgsql STABLE ROWS 50
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT d.job_id FROM ledger.discarded d JOIN ledger.jobs j ON j.id = d.job_id
    WHERE ledger._job_matches(j, discarded_find.kind, discarded_find.queue, discarded_find.since,
                              discarded_find.error_like, discarded_find.search)
    ORDER BY d.discarded_at DESC, d.job_id DESC
    LIMIT discarded_find.lim;
END $$;

-- How many dead letters match (what "replay all matching" would take).
CREATE FUNCTION ledger.discarded_count(
    kind text DEFAULT NULL, queue text DEFAULT NULL, since timestamptz DEFAULT NULL,
    error_like text DEFAULT NULL, search text DEFAULT NULL
) RETURNS bigint LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FROM ledger.discarded d JOIN ledger.jobs j ON j.id = d.job_id
    WHERE ledger._job_matches(j, discarded_count.kind, discarded_count.queue, discarded_count.since,
                            discarded_count.error_like, discarded_count.search)
$$;

-- The job that holds the unique key `j` would take back by a replay, if
-- any: a replay that would make two jobs with one key is refused
-- (job_replay and the bulk replay both ask here).
CREATE FUNCTION ledger._unique_holder(j ledger.jobs)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT o.id FROM ledger.jobs o
    WHERE j.unique_key IS NOT NULL AND 'available' = ANY (j.unique_states)
      AND o.unique_key = j.unique_key AND o.state = ANY (o.unique_states) AND o.id <> j.id
    LIMIT 1
$$;

-- One chunk of a bulk replay or cancel: the jobs after `after_id` (up to
-- `upto_id`) in id order, at most `max_jobs`, that are in the action's
-- states and match the filter (ledger._job_matches; at least one filter).
-- Each is locked and checked again, then goes through the same append as
-- one job would (ledger._append: the fold, the event with its hash, the
-- projections), its event carrying `batch`, so `ledger verify` and
-- `ledger rebuild --check` stay clean. One row per job looked at, refused
-- ones included with the reason (nothing is passed over silently):
-- outcome replayed / cancelled / refused / changed (it no longer matched
-- once locked), or with dry_run, would replay / would cancel / would refuse,
-- writing nothing. The caller passes the largest id returned as the next
-- chunk's after_id, so chunks are short transactions that take no job
-- twice. The first chunk records the act in ledger.bulk_actions; a batch id
-- is one act: reusing it for another is refused. No subtransaction per job:
-- the refusals are checked before the append (a failure anywhere else
-- rolls the chunk back whole).
CREATE FUNCTION ledger._jobs_bulk(
    action text, batch uuid, kind text, queue text, since timestamptz, error_like text, search text,
    actor text, via text, reason text, after_id bigint, upto_id bigint, max_jobs int, dry_run boolean
) RETURNS TABLE (job_id bigint, outcome text, detail text) LANGUAGE plpgsql AS $$
DECLARE
    states ledger.job_state[] := CASE action WHEN 'replay' THEN '{discarded}'::ledger.job_state[]
                                             ELSE '{scheduled,available,retryable,running}'::ledger.job_state[] END;
    filters jsonb := jsonb_strip_nulls(jsonb_build_object(
        'kind', kind, 'queue', queue, 'since', since, 'error_like', error_like, 'search', search));
    who text := coalesce(actor, session_user::text);
    recorded ledger.bulk_actions;
    ids bigint[];
    j ledger.jobs;
    holder bigint;
    seen bigint[] := '{}';
BEGIN
    IF batch IS NULL THEN
        RAISE EXCEPTION 'batch: a bulk % needs a batch id', action USING ERRCODE = 'LG004';
    ELSIF filters = '{}' THEN
        RAISE EXCEPTION 'filters: give at least one of kind, queue, since, error_like, search' USING ERRCODE = 'LG004';
    ELSIF nullif(btrim(coalesce(reason, '')), '') IS NULL THEN
        RAISE EXCEPTION 'reason: a bulk % needs a reason; it is recorded in every event', action USING ERRCODE = 'LG004';
    ELSIF max_jobs IS NULL OR max_jobs NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'max_jobs %: must be between 1 and 10000', max_jobs USING ERRCODE = 'LG004';
    END IF;
    IF NOT dry_run THEN
        INSERT INTO ledger.bulk_actions AS b (batch, action, filters, by, via, reason)
        VALUES (batch, action, filters, who, via, reason)
        ON CONFLICT ON CONSTRAINT bulk_actions_pkey DO NOTHING;
        SELECT * INTO recorded FROM ledger.bulk_actions b WHERE b.batch = _jobs_bulk.batch;
        IF (recorded.action, recorded.filters, recorded.reason) IS DISTINCT FROM (action, filters, reason) THEN
            RAISE EXCEPTION 'batch %: that id is another act (% of %); a batch id is one act', batch,
                recorded.action, recorded.filters USING ERRCODE = 'LG004';
        END IF;
    END IF;
    ids := ARRAY(SELECT x.id FROM ledger.jobs x
                 WHERE x.id > coalesce(after_id, 0) AND (upto_id IS NULL OR x.id <= upto_id)
                   AND x.state = ANY (states)
                   AND ledger._job_matches(x, _jobs_bulk.kind, _jobs_bulk.queue, _jobs_bulk.since,
                                           _jobs_bulk.error_like, _jobs_bulk.search)
                 ORDER BY x.id LIMIT max_jobs);
    IF dry_run THEN
        FOR j IN SELECT * FROM ledger.jobs x WHERE x.id = ANY (ids) ORDER BY x.id LOOP
            holder := CASE WHEN action = 'replay' THEN ledger._unique_holder(j) END;
            RETURN QUERY SELECT j.id, CASE WHEN holder IS NOT NULL THEN 'would refuse' ELSE 'would ' || action END,
                CASE WHEN holder IS NOT NULL THEN format('job %s holds its unique key %s', holder, j.unique_key) END;
        END LOOP;
        RETURN;
    END IF;
    -- Locked in id order (two bulk acts never deadlock), and matched again under the lock.
    FOR j IN SELECT * FROM ledger.jobs x
             WHERE x.id = ANY (ids) AND x.state = ANY (states)
               AND ledger._job_matches(x, _jobs_bulk.kind, _jobs_bulk.queue, _jobs_bulk.since,
                                           _jobs_bulk.error_like, _jobs_bulk.search)
             ORDER BY x.id FOR UPDATE LOOP
        seen := seen || j.id;
        IF action = 'replay' THEN
            holder := ledger._unique_holder(j);
            IF holder IS NOT NULL THEN
                RETURN QUERY SELECT j.id, 'refused', format('job %s cannot be replayed: job %s holds its unique key %s',
                                                            j.id, holder, j.unique_key);
                CONTINUE;
            END IF;
            PERFORM ledger._append(j, j.id, 'replayed', jsonb_build_object('by', who, 'reason', reason, 'batch', batch),
                                   jsonb_build_object('via', via, 'batch', batch));
            RETURN QUERY SELECT j.id, 'replayed', NULL::text;
        ELSE
            IF j.state = 'running' THEN  -- its worker stops the body, as for ledger.job_cancel
                PERFORM pg_notify('ledger:cancel', j.id::text);
            END IF;
            PERFORM ledger._append(j, j.id, 'cancelled', jsonb_build_object('reason', reason, 'batch', batch),
                                   jsonb_build_object('via', via, 'by', who, 'batch', batch));
            RETURN QUERY SELECT j.id, 'cancelled', NULL::text;
        END IF;
    END LOOP;
    RETURN QUERY SELECT x.id, 'changed', format('job %s changed while the %s ran; it no longer matches', x.id, action)
                 FROM unnest(ids) AS x(id) WHERE NOT (x.id = ANY (seen));
END $$;

-- Replay every dead letter that matches the filter, one chunk per call (see
-- ledger._jobs_bulk): a fresh attempt budget each, the same batch id in
-- every replayed event, refusals reported per job.
CREATE FUNCTION ledger.jobs_replay_bulk(
    batch uuid, kind text DEFAULT NULL, queue text DEFAULT NULL, since timestamptz DEFAULT NULL,
    error_like text DEFAULT NULL, search text DEFAULT NULL, actor text DEFAULT NULL, via text DEFAULT NULL,
    reason text DEFAULT NULL, after_id bigint DEFAULT 0, upto_id bigint DEFAULT NULL, max_jobs int DEFAULT 1000,
    dry_run boolean DEFAULT false
) RETURNS TABLE (job_id bigint, outcome text, detail text) LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM ledger._jobs_bulk('replay', batch, kind, queue, since, error_like, search, actor, via, reason,
                                    after_id, upto_id, max_jobs, dry_run)
$$;

-- Cancel every unfinished job that matches the filter, one chunk per call:
-- running ones too (their workers are told, as for ledger.job_cancel).
CREATE FUNCTION ledger.jobs_cancel_bulk(
    batch uuid, kind text DEFAULT NULL, queue text DEFAULT NULL, since timestamptz DEFAULT NULL,
    error_like text DEFAULT NULL, search text DEFAULT NULL, actor text DEFAULT NULL, via text DEFAULT NULL,
    reason text DEFAULT NULL, after_id bigint DEFAULT 0, upto_id bigint DEFAULT NULL, max_jobs int DEFAULT 1000,
    dry_run boolean DEFAULT false
) RETURNS TABLE (job_id bigint, outcome text, detail text) LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM ledger._jobs_bulk('cancel', batch, kind, queue, since, error_like, search, actor, via, reason,
                                    after_id, upto_id, max_jobs, dry_run)
$$;

-- ---------------------------------------------------------------- throughput

CREATE VIEW ledger.read_throughput AS
    SELECT minute, kind, succeeded, failed, discarded FROM ledger.throughput;

-- Fold the outcome events after the cursor into per-minute counts per kind
-- (at most max_events positions per call, so a call after a long pause
-- stays short and the next one continues). The dashboard and the workers'
-- schedulers call it; one at a time (a try-lock: a second caller returns 0
-- at once rather than wait). Events younger than `settle` wait for the next
-- call, and positions are taken before commit, so a transaction committing
-- late can land below the cursor: like the metrics, a close count, not an
-- exact one. Reads the events after the cursor through the BRIN index on
-- position (a partition whose positions all lie below is skipped whole),
-- and each event's kind from its job's row. Returns the events read.
CREATE FUNCTION ledger.throughput_refresh(settle interval DEFAULT '2 seconds', max_events bigint DEFAULT 1000000)
RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    from_position bigint;
    to_position bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1835367) THEN
        RETURN 0;
    END IF;
    SELECT c.position INTO from_position FROM ledger.throughput_cursor c WHERE c.id = 1;
    SELECT coalesce(max(e.position), from_position) INTO to_position
    FROM ledger.events e
    WHERE e.position > from_position AND e.position <= from_position + greatest(max_events, 1)
      AND e.at <= now() - settle;
    IF to_position <= from_position THEN
        RETURN 0;
    END IF;
    INSERT INTO ledger.throughput AS t (minute, kind, succeeded, failed, discarded)
    SELECT date_bin('1 minute', e.at, timestamptz 'epoch'), j.kind,
           count(*) FILTER (WHERE e.type = 'succeeded'),
           count(*) FILTER (WHERE e.type IN ('failed', 'rescued')),
           count(*) FILTER (WHERE e.type = 'discarded')
    FROM ledger.events e JOIN ledger.jobs j ON j.id = e.job_id
    WHERE e.position > from_position AND e.position <= to_position
      AND e.type IN ('succeeded', 'failed', 'rescued', 'discarded')
    GROUP BY 1, 2
    ON CONFLICT ON CONSTRAINT throughput_pkey DO UPDATE
    SET succeeded = t.succeeded + excluded.succeeded, failed = t.failed + excluded.failed,
        discarded = t.discarded + excluded.discarded;
    DELETE FROM ledger.throughput t WHERE t.minute < now() - interval '8 days';
    UPDATE ledger.throughput_cursor SET position = to_position, folded_at = now() WHERE id = 1;
    RETURN to_position - from_position;
END $$;

-- ---------------------------------------------------------------- web sessions
-- The web app calls these through its store (web/sessions.py, web/throttle.py);
-- every argument is a hash or an address, never the API token itself.

-- Start a dashboard session whose cookie hashes to `hash`, live for `ttl`;
-- returns when it expires. Then removes up to 100 expired sessions,
-- skipping rows another transaction holds, so the table holds little more
-- than the live sessions and the sweep never waits on a lock.
CREATE FUNCTION ledger.web_session_start(hash bytea, ttl interval)
RETURNS timestamptz LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ledger.web_sessions (id_hash, expires_at) VALUES (hash, now() + ttl);
    DELETE FROM ledger.web_sessions
    WHERE id_hash IN (SELECT s.id_hash FROM ledger.web_sessions s WHERE s.expires_at <= now()
                      ORDER BY s.expires_at LIMIT 100 FOR UPDATE SKIP LOCKED);
    SELECT s.expires_at FROM ledger.web_sessions s WHERE s.id_hash = hash;
$$;

-- When the session whose cookie hashes to `hash` expires; NULL when there is
-- no such session, or it has expired or ended: a NULL opens nothing.
CREATE FUNCTION ledger.web_session_check(hash bytea)
RETURNS timestamptz LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.expires_at FROM ledger.web_sessions s WHERE s.id_hash = hash AND s.expires_at > now();
$$;

-- End the session whose cookie hashes to `hash` (sign-out): from this
-- commit the cookie opens nothing, wherever a copy of it went. True when a
-- live session was ended.
CREATE FUNCTION ledger.web_session_end(hash bytea)
RETURNS boolean LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH ended AS (DELETE FROM ledger.web_sessions s WHERE s.id_hash = hash RETURNING s.expires_at)
    SELECT coalesce(bool_or(ended.expires_at > now()), false) FROM ended;
$$;

-- How long `who` must wait before a token it sends is compared again: NULL
-- when it may try now (fewer than max_failures failures in its open window).
CREATE FUNCTION ledger.web_auth_wait(who text, max_failures int)
RETURNS interval LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT f.window_end - now() FROM ledger.web_auth_failures f
    WHERE f.client = who AND f.failures >= max_failures AND f.window_end > now();
$$;

-- Count one failed attempt of `who` in its window (a new window of length
-- `per` when none is open) and return the wait now in force, as
-- web_auth_wait would. One upsert: failures counted by any process, at the
-- same moment, all count. Then removes up to 100 rows of closed windows,
-- skipping locked ones, so the table holds about the clients of the open
-- windows. The sweep comes after the upsert, the one statement that may
-- wait on a row lock, and never waits itself: two calls cannot deadlock.
CREATE FUNCTION ledger.web_auth_fail(who text, max_failures int, per interval)
RETURNS interval LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ledger.web_auth_failures AS f (client, failures, window_end)
    VALUES (who, 1, now() + per)
    ON CONFLICT (client) DO UPDATE SET
        failures = CASE WHEN f.window_end <= now() THEN 1 ELSE f.failures + 1 END,
        window_end = CASE WHEN f.window_end <= now() THEN now() + per ELSE f.window_end END;
    DELETE FROM ledger.web_auth_failures
    WHERE client IN (SELECT f.client FROM ledger.web_auth_failures f
                     WHERE f.window_end <= now() AND f.client <> who
                     ORDER BY f.window_end LIMIT 100 FOR UPDATE SKIP LOCKED);
    SELECT CASE WHEN f.failures >= max_failures THEN f.window_end - now() END
    FROM ledger.web_auth_failures f WHERE f.client = who;
$$;

-- Forget the failures of `who` (it has just signed in with the right token).
CREATE FUNCTION ledger.web_auth_forgive(who text)
RETURNS void LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ledger.web_auth_failures f WHERE f.client = who;
$$;

-- ---------------------------------------------------------------- partitions and retention

-- Create the events partition for job ids [lo, hi) as a table of its own and
-- attach it: ATTACH takes SHARE UPDATE EXCLUSIVE on ledger.events, which lets
-- appends go on, where CREATE TABLE ... PARTITION OF would take ACCESS
-- EXCLUSIVE. Row triggers are cloned from the parent; TRUNCATE triggers are
-- not, so each partition gets its own (TRUNCATE of a partition is refused too).
CREATE FUNCTION ledger._events_partition_guard(name text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON ledger.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION ledger._events_append_only()', name);
END $$;

CREATE FUNCTION ledger._events_partition_attach(name text, lo bigint, hi bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger._events_partition_guard(name);
    EXECUTE format('ALTER TABLE ledger.events ATTACH PARTITION ledger.%I FOR VALUES FROM (%s) TO (%s)', name, lo, hi);
    INSERT INTO ledger.events_partitions AS p (lo, hi, name) VALUES (lo, hi, name)
    ON CONFLICT ON CONSTRAINT events_partitions_pkey DO UPDATE SET name = excluded.name, pruned_at = now();
END $$;

CREATE FUNCTION ledger._events_partition_table(name text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE ledger.%I (LIKE ledger.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
END $$;

-- Make sure partitions cover every job id up to `upto` plus one spare
-- partition. Returns the first id not covered. Racing callers serialise on
-- the ledger.events_partitioning row and the later one finds the work done.
CREATE FUNCTION ledger.events_partitions_ensure(upto bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    cfg ledger.events_partitioning;
    name text;
BEGIN
    SELECT * INTO cfg FROM ledger.events_partitioning WHERE id = 1 FOR UPDATE;
    WHILE cfg.covered_until <= upto + cfg.size LOOP
        name := 'events_' || cfg.covered_until;
        PERFORM ledger._events_partition_table(name);
        PERFORM ledger._events_partition_attach(name, cfg.covered_until, cfg.covered_until + cfg.size);
        cfg.covered_until := cfg.covered_until + cfg.size;
    END LOOP;
    UPDATE ledger.events_partitioning SET covered_until = cfg.covered_until WHERE id = 1;
    RETURN cfg.covered_until;
END $$;

-- Retention for the events partition that starts at job id `lo`: remove the
-- jobs of its range that finished (succeeded or cancelled; discarded too
-- only when purge_discarded) before `cutoff`, with all their events and
-- projection rows. History is never edited row by row: a partition whose
-- jobs all go is dropped; one where at least half go is rewritten (the
-- survivors' events are copied into a fresh table that replaces it); one
-- where fewer than half go is kept for a later pass. A partition that can
-- still receive new job ids is never touched.
-- Locks: the partition is held in SHARE mode while it is counted and copied
-- (appends to other partitions go on); ledger.events is taken in ACCESS
-- EXCLUSIVE only for the DROP (and ATTACH), so appends pause for
-- milliseconds. The caller sets lock_timeout below deadlock_timeout: a
-- worker whose transaction wants the partition while holding ledger.events
-- then never loses to a deadlock; the prune times out, rolls back and retries.
CREATE FUNCTION ledger.events_prune_partition(lo bigint, cutoff timestamptz, purge_discarded boolean DEFAULT false)
RETURNS TABLE (action text, jobs_removed bigint, events_removed bigint, jobs_kept bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p ledger.events_partitions;
    finished ledger.job_state[] := CASE WHEN purge_discarded
        THEN ARRAY['succeeded', 'cancelled', 'discarded']::ledger.job_state[]
        ELSE ARRAY['succeeded', 'cancelled']::ledger.job_state[] END;
    removable bigint;
    kept bigint;
    removed bigint[];
    n_before bigint;
    n_after bigint;
    n_theirs bigint;
    fresh text;
BEGIN
    SELECT * INTO p FROM ledger.events_partitions ep WHERE ep.lo = events_prune_partition.lo FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no events partition starts at job id %', lo USING ERRCODE = 'LG004';
    END IF;
    IF p.hi > (SELECT s.last_value FROM ledger.job_id_seq s) THEN
        RETURN QUERY SELECT 'open', 0::bigint, 0::bigint, NULL::bigint;
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE j.state = ANY (finished) AND j.finalized_at < cutoff),
           count(*) FILTER (WHERE NOT (j.state = ANY (finished) AND j.finalized_at < cutoff))
    INTO removable, kept
    FROM ledger.jobs j WHERE j.id >= p.lo AND j.id < p.hi;
    IF removable = 0 OR removable < kept THEN
        RETURN QUERY SELECT 'kept', 0::bigint, 0::bigint, kept;
        RETURN;
    END IF;
    -- The row locks of this DELETE keep a racing replay of a cancelled or
    -- discarded job out: it waits, then finds the job gone.
    WITH gone AS (
        DELETE FROM ledger.jobs j
        WHERE j.id >= p.lo AND j.id < p.hi AND j.state = ANY (finished) AND j.finalized_at < cutoff
        RETURNING j.id
    ) SELECT array_agg(gone.id) INTO removed FROM gone;
    IF removed IS NULL THEN  -- replayed meanwhile
        RETURN QUERY SELECT 'kept', 0::bigint, 0::bigint, kept;
        RETURN;
    END IF;
    DELETE FROM ledger.discarded d WHERE d.job_id = ANY (removed);
    SELECT count(*) INTO kept FROM ledger.jobs j WHERE j.id >= p.lo AND j.id < p.hi;
    EXECUTE format('LOCK TABLE ledger.%I IN SHARE MODE', p.name);
    EXECUTE format('SELECT count(*) FROM ledger.%I', p.name) INTO n_before;
    EXECUTE format('SELECT count(*) FROM ledger.%I e WHERE e.job_id IN (SELECT unnest($1))', p.name)
        INTO n_theirs USING removed;
    IF kept = 0 AND n_theirs = n_before THEN
        LOCK TABLE ledger.events IN ACCESS EXCLUSIVE MODE;
        EXECUTE format('DROP TABLE ledger.%I', p.name);
        DELETE FROM ledger.events_partitions ep WHERE ep.lo = p.lo;
        RETURN QUERY SELECT 'dropped', cardinality(removed)::bigint, n_before, 0::bigint;
        RETURN;
    END IF;
    fresh := CASE WHEN p.name = 'events_' || p.lo THEN 'events_' || p.lo || '_r' ELSE 'events_' || p.lo END;
    PERFORM ledger._events_partition_table(fresh);
    -- Copy what is not removed (rather than what is kept) so that an event
    -- without a projection row can never be lost by a prune.
    EXECUTE format('INSERT INTO ledger.%I SELECT e.* FROM ledger.%I e '
                   'WHERE NOT EXISTS (SELECT 1 FROM unnest($1) r(id) WHERE r.id = e.job_id)', fresh, p.name)
        USING removed;
    GET DIAGNOSTICS n_after = ROW_COUNT;
    IF n_before - n_after <> n_theirs THEN
        RAISE EXCEPTION 'prune of events partition %: % events would go but the removed jobs have %; nothing changed',
            p.name, n_before - n_after, n_theirs;
    END IF;
    -- Indexes and a CHECK matching the bounds before the swap, so ATTACH
    -- neither builds nor scans while it holds ledger.events.
    EXECUTE format('ALTER TABLE ledger.%I ADD PRIMARY KEY (job_id, version)', fresh);
    EXECUTE format('CREATE INDEX ON ledger.%I USING brin (position)', fresh);
    EXECUTE format('ALTER TABLE ledger.%I ADD CONSTRAINT %I CHECK (job_id >= %s AND job_id < %s)',
                   fresh, fresh || '_range', p.lo, p.hi);
    LOCK TABLE ledger.events IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('DROP TABLE ledger.%I', p.name);
    PERFORM ledger._events_partition_attach(fresh, p.lo, p.hi);
    RETURN QUERY SELECT 'rewritten', cardinality(removed)::bigint, n_before - n_after, kept;
END $$;

-- ---------------------------------------------------------------- triggers

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger._events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON ledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger._events_append_only();
CREATE TRIGGER queue_events_no_update_delete BEFORE UPDATE OR DELETE ON ledger.queue_events
    FOR EACH ROW EXECUTE FUNCTION ledger._events_append_only();
CREATE TRIGGER queue_events_no_truncate BEFORE TRUNCATE ON ledger.queue_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger._events_append_only();
CREATE TRIGGER schedule_events_no_update_delete BEFORE UPDATE OR DELETE ON ledger.schedule_events
    FOR EACH ROW EXECUTE FUNCTION ledger._events_append_only();
CREATE TRIGGER schedule_events_no_truncate BEFORE TRUNCATE ON ledger.schedule_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger._events_append_only();
CREATE TRIGGER bulk_actions_no_update_delete BEFORE UPDATE OR DELETE ON ledger.bulk_actions
    FOR EACH ROW EXECUTE FUNCTION ledger._events_append_only();
CREATE TRIGGER bulk_actions_no_truncate BEFORE TRUNCATE ON ledger.bulk_actions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger._events_append_only();

-- ---------------------------------------------------------------- partitions

-- Guard every partition (an upgraded database's first partition needs it)
-- and create the first ones, or the spare one ahead.
SELECT ledger._events_partition_guard(name) FROM ledger.events_partitions;
SELECT ledger.events_partitions_ensure((SELECT last_value FROM ledger.job_id_seq));

-- ---------------------------------------------------------------- privileges

SELECT ledger.grants_apply();
