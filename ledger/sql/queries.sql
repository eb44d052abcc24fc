-- Every statement the project sends, loaded by name (ledger/queries.py) by
-- the store alone (ledger/store_async.py, and ledger/store.py generated from
-- it). Writes go through the schema's functions; reads select from the
-- read views (ledger.read_*), which are all the application role may read.

-- name: job_get
SELECT * FROM ledger.read_jobs WHERE id = %(id)s;

-- name: events_for_job
SELECT position, job_id, version, type, at, data, metadata
FROM ledger.read_events WHERE job_id = %(id)s ORDER BY version;

-- name: trace_carriers
-- The trace context each job's enqueue recorded: version 1 is the `enqueued` event.
SELECT job_id, metadata->'trace' AS trace
FROM ledger.read_events WHERE job_id = ANY(%(ids)s::bigint[]) AND version = 1 AND metadata ? 'trace';

-- name: discarded_list
-- Which dead letters, and in what order, is ledger.discarded_find's (the filter the bulk replay uses too).
SELECT d.* FROM ledger.discarded_find(%(kind)s, %(queue)s, %(since)s::timestamptz, %(error_like)s, %(search)s,
                                      %(limit)s) f
JOIN ledger.read_discarded d ON d.job_id = f.job_id
ORDER BY d.discarded_at DESC, d.job_id DESC;

-- name: job_enqueue_many
-- args travel as one JSON array (the client joins the texts it dumped and
-- checked, one per job), unpacked here into the jsonb[] the function takes;
-- the other arrays go binary, which psycopg builds far faster than text.
SELECT id, duplicate FROM ledger.job_enqueue_many(
    %(kinds)b::text[],
    ARRAY(SELECT e FROM jsonb_array_elements(%(args)s::jsonb) WITH ORDINALITY AS x(e, i) ORDER BY i),
    %(queues)b::text[], %(priorities)b::int[],
    %(max_attempts)b::int[], %(run_ats)s::timestamptz[], %(metadata)s,
    %(unique_keys)s::text[], %(unique_periods)s::interval[], %(unique_states)s::text[]);

-- name: job_enqueue
-- One job without a uniqueness rule: scalars, which psycopg dumps in C.
SELECT ledger.job_enqueue(%(kind)s, %(args)s::jsonb, %(queue)s, %(priority)s::int, %(max_attempts)s::int,
                          %(run_at)s::timestamptz, %(metadata)s) AS id;

-- name: job_claim
SELECT * FROM ledger.job_claim(%(queue)s, %(n)s, %(worker)s, %(lease)s, %(metadata)s, %(kinds)s::text[]);

-- name: job_succeed
SELECT * FROM ledger.job_succeed(%(id)s, %(expected_version)s, %(metadata)s, %(result)s::jsonb);

-- name: job_fail
SELECT * FROM ledger.job_fail(%(id)s, %(error)s, %(retry_at)s, %(discard)s, %(expected_version)s, %(metadata)s);

-- name: job_cancel
SELECT * FROM ledger.job_cancel(%(id)s, %(reason)s, %(expected_version)s, %(metadata)s);

-- name: job_stop
SELECT * FROM ledger.job_stop(%(id)s, %(how)s, %(expected_version)s, %(metadata)s);

-- name: job_snooze
SELECT * FROM ledger.job_snooze(%(id)s, %(run_at)s, %(expected_version)s, %(metadata)s);

-- name: job_replay
SELECT * FROM ledger.job_replay(%(id)s, %(actor)s, %(reason)s, %(expected_version)s, %(metadata)s);

-- name: job_rescue
SELECT * FROM ledger.job_rescue(coalesce(%(as_of)s::timestamptz, now()), %(ids)s::bigint[], %(metadata)s);

-- name: projections_diff
SELECT * FROM ledger.projections_diff();

-- name: projections_rebuild
SELECT ledger.projections_rebuild() AS jobs;

-- name: periodic_enqueue
SELECT ledger.periodic_enqueue(%(name)s, %(every)s, %(kind)s, %(args)s, %(queue)s, %(priority)s, %(max_attempts)s) AS id;

-- name: worker_heartbeat
SELECT ledger.worker_heartbeat(%(worker)s, %(lease)s, %(queues)s::text[], %(kinds)s::text[]) AS expires_at;

-- name: kinds_unserved
SELECT * FROM ledger.kinds_unserved();

-- name: worker_stop
SELECT ledger.worker_stop(%(worker)s);

-- name: jobs_list
-- Newest first; keyset pagination on id (pass the last id seen as `before`). Which jobs is
-- ledger.jobs_find's (the filter the bulk actions use too).
SELECT r.* FROM ledger.jobs_find(%(state)s::ledger.job_state, %(kind)s, %(queue)s, %(since)s::timestamptz,
                                 %(error_like)s, %(search)s, %(before)s::bigint, %(limit)s) f
JOIN ledger.read_jobs r ON r.id = f.id
ORDER BY r.id DESC;

-- name: job_counts
SELECT * FROM ledger.job_counts();

-- name: metrics_refresh
SELECT ledger.metrics_refresh() AS events;

-- name: metrics_histogram
SELECT metric, kind, le, count, sum FROM ledger.read_metrics ORDER BY metric, kind, le;

-- name: events_appended
SELECT ledger.events_appended() AS total;

-- name: job_succeed_many
SELECT * FROM ledger.job_succeed_many(
    %(ids)s::bigint[], %(versions)s::int[], %(worker)s, %(duration_ms)s::float8[], %(wait_ms)s::float8[],
    %(results)s::jsonb[]);

-- name: events_partitions
SELECT lo, hi, name, pruned_at FROM ledger.read_partitions ORDER BY lo;

-- name: events_prune_partition
SELECT * FROM ledger.events_prune_partition(%(lo)s, %(cutoff)s, %(purge_discarded)s);

-- name: jobs_running_for_worker
SELECT id FROM ledger.read_jobs WHERE state = 'running' AND worker = %(worker)s;

-- name: job_rescue_orphans
-- Jobs a live worker holds in the database but not in memory (a claim whose
-- answer was lost): rescued whatever its lease says.
SELECT id FROM ledger.job_rescue('infinity', %(ids)s, %(metadata)s, %(reason)s);

-- name: schema_present
-- The read view where it exists (what every role may read), else the table
-- (a ledger from before the view, which only its owner migrates).
SELECT to_regclass('ledger.schema_version') IS NOT NULL AS present,
       to_regclass('ledger.read_schema_versions') IS NOT NULL AS readable;

-- name: schema_version
SELECT max(version) AS version FROM ledger.schema_version;

-- name: schema_version_read
SELECT max(version) AS version FROM ledger.read_schema_versions;

-- name: schema_version_record
INSERT INTO ledger.schema_version (version) VALUES (%(version)s);

-- name: migrate_lock
-- Held to the end of the migrating transaction: two processes never apply the schema at once.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: db_now_minus
-- A cutoff on the database's clock, the one every event's `at` is written with.
SELECT now() - %(period)s::interval AS at;

-- name: backend_pid
-- The server process this session runs in: a pooler in between answers the startup with a pid of its own.
SELECT pg_backend_pid() AS pid;

-- name: lock_timeout_local
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: database_exists
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s) AS present;

-- name: events_verify
SELECT * FROM ledger.events_verify();

-- name: roles_record
INSERT INTO ledger.roles (name, access) VALUES (%(name)s, %(access)s)
ON CONFLICT (name) DO UPDATE SET access = excluded.access;

-- name: grants_apply
SELECT ledger.grants_apply();

-- name: role_exists
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(name)s) AS present;

-- ---- web sessions
-- The dashboard's sessions and the throttle in front of the API token; see
-- the `web sessions` blocks of schema.sql. Hashes and addresses only.

-- name: web_session_start
SELECT ledger.web_session_start(hash => %(hash)s, ttl => %(ttl)s) AS expires_at;

-- name: web_session_check
SELECT ledger.web_session_check(hash => %(hash)s) AS expires_at;

-- name: web_session_end
SELECT ledger.web_session_end(hash => %(hash)s) AS ended;

-- name: web_auth_wait
SELECT ledger.web_auth_wait(who => %(who)s, max_failures => %(max_failures)s) AS wait;

-- name: web_auth_fail
SELECT ledger.web_auth_fail(who => %(who)s, max_failures => %(max_failures)s, per => %(per)s) AS wait;

-- name: web_auth_forgive
SELECT ledger.web_auth_forgive(who => %(who)s);

-- ---- flow control

-- name: queue_set_paused
SELECT * FROM ledger.queue_set_paused(%(queue)s, %(paused)s, %(actor)s, %(reason)s);

-- name: queue_states
SELECT * FROM ledger.read_queue_state ORDER BY queue;

-- name: limit_set
SELECT * FROM ledger.limit_set(%(scope)s, %(concurrency)s, %(rate)s, %(per)s, %(key_path)s::text[]);

-- name: limit_clear
SELECT ledger.limit_clear(%(scope)s) AS cleared;

-- name: limits_list
SELECT * FROM ledger.read_limits ORDER BY scope;

-- ---- package / CLI (issue 14)

-- name: queue_waits
-- Per queue: the jobs due now that no worker has claimed, and how long the
-- oldest of them has waited since it became due. Claimable rows are exactly
-- those of the partial index jobs_claim_idx, so this reads the backlog only.
SELECT queue, count(*) AS due, min(run_at) AS oldest_due_at, now() - min(run_at) AS oldest_wait
FROM ledger.jobs
WHERE state IN ('available', 'scheduled', 'retryable') AND run_at <= now()
GROUP BY queue
ORDER BY queue;

-- name: server_connections_other
-- Other sessions on this server (any database): a worker or a web app still
-- using the embedded server that `ledger db stop` is about to stop.
SELECT count(*) AS sessions, coalesce(string_agg(DISTINCT datname, ', '), '') AS databases
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();

-- ---- results, progress and waiting

-- name: job_progress_set
SELECT coalesce(ledger.job_progress_set(%(id)s, %(attempt)s, %(value)s), false) AS kept;

-- name: job_progress_get
SELECT attempt, at, value FROM ledger.read_progress WHERE job_id = %(id)s;

-- name: job_outcome
-- What a waiter needs: the job's state, its last error, and its result (the
-- data of its last `succeeded` event).
SELECT j.state, j.last_error,
       (SELECT e.data -> 'result' FROM ledger.read_events e
        WHERE e.job_id = j.id AND e.type = 'succeeded' ORDER BY e.version DESC LIMIT 1) AS result
FROM ledger.read_jobs j WHERE j.id = %(id)s;

-- name: job_wait_begin
SELECT ledger.job_wait_begin(%(id)s);

-- name: job_wait_end
SELECT ledger.job_wait_end(%(id)s);
-- ---- schedules (cron schedules: ledger/cron.py, worker/periodic.py, `ledger schedules`)

-- name: schedule_declare
SELECT * FROM ledger.schedule_declare(%(name)s, %(cron)s, %(timezone)s, %(kind)s, %(args)s, %(queue)s,
                                      %(priority)s, %(max_attempts)s, %(missed)s, %(grace)s);

-- name: schedule_fire
SELECT * FROM ledger.schedule_fire(%(name)s, %(cron)s, %(timezone)s, %(expected)s, %(following)s, %(slot)s,
                                   %(missed)s, %(first_missed)s, %(last_missed)s);

-- name: schedule_set_paused
SELECT * FROM ledger.schedule_set_paused(%(name)s, %(paused)s, %(actor)s, %(reason)s);

-- name: schedules_list
-- Every declared schedule, with the database's clock (what "due" is measured against).
SELECT s.*, now() AS now FROM ledger.read_schedules s ORDER BY s.name;

-- name: schedule_events_list
SELECT * FROM ledger.read_schedule_events
WHERE (%(name)s::text IS NULL OR schedule = %(name)s)
ORDER BY position DESC
LIMIT %(limit)s;

-- ---- bulk actions (`ledger replay/cancel --kind ...`, POST /api/jobs/replay|cancel, the failed page)

-- name: jobs_replay_bulk
SELECT * FROM ledger.jobs_replay_bulk(%(batch)s, %(kind)s, %(queue)s, %(since)s::timestamptz, %(error_like)s,
                                      %(search)s, %(actor)s, %(via)s, %(reason)s, %(after_id)s, %(upto_id)s,
                                      %(max_jobs)s, %(dry_run)s);

-- name: jobs_cancel_bulk
SELECT * FROM ledger.jobs_cancel_bulk(%(batch)s, %(kind)s, %(queue)s, %(since)s::timestamptz, %(error_like)s,
                                      %(search)s, %(actor)s, %(via)s, %(reason)s, %(after_id)s, %(upto_id)s,
                                      %(max_jobs)s, %(dry_run)s);

-- name: jobs_last_id
-- Where a bulk act stops: jobs enqueued after it started are not its business.
SELECT coalesce(max(id), 0) AS id FROM ledger.read_jobs;

-- name: discarded_count
SELECT ledger.discarded_count(%(kind)s, %(queue)s, %(since)s::timestamptz, %(error_like)s, %(search)s) AS n;

-- name: bulk_action_get
SELECT * FROM ledger.read_bulk_actions WHERE batch = %(batch)s;

-- ---- throughput (the dashboard's chart)

-- name: throughput_refresh
SELECT ledger.throughput_refresh(%(settle)s, %(max_events)s) AS events;

-- name: throughput_since
-- Outcomes per minute and kind from `since` on: the rollup's rows, a few hundred for a few hours.
SELECT minute, kind, succeeded, failed, discarded FROM ledger.read_throughput
WHERE minute >= %(since)s AND (%(kind)s::text IS NULL OR kind = %(kind)s)
ORDER BY minute, kind;
