-- Every statement the project sends, loaded by name (ledger/queries.py) by
-- the store alone (ledger/store_async.py, and ledger/store.py generated from
-- it). Writes go through the schema's functions; reads are plain.

-- name: job_get
SELECT * FROM ledger.jobs WHERE id = %(id)s;

-- name: events_for_job
SELECT position, job_id, version, type, at, data, metadata
FROM ledger.events WHERE job_id = %(id)s ORDER BY version;

-- name: discarded_list
SELECT d.*, j.last_error
FROM ledger.discarded d JOIN ledger.jobs j ON j.id = d.job_id
WHERE (%(kind)s::text IS NULL OR d.kind = %(kind)s)
  AND (%(queue)s::text IS NULL OR d.queue = %(queue)s)
ORDER BY d.discarded_at DESC, d.job_id DESC
LIMIT %(limit)s;

-- name: job_enqueue_many
-- args travel as one JSON array (the client joins the texts it dumped and
-- checked, one per job), unpacked here into the jsonb[] the function takes;
-- the other arrays go binary, which psycopg builds far faster than text.
SELECT ledger.job_enqueue_many(
    %(kinds)b::text[],
    ARRAY(SELECT e FROM jsonb_array_elements(%(args)s::jsonb) WITH ORDINALITY AS x(e, i) ORDER BY i),
    %(queues)b::text[], %(priorities)b::int[],
    %(max_attempts)b::int[], %(run_ats)s::timestamptz[], %(metadata)s) AS id;

-- name: job_claim
SELECT * FROM ledger.job_claim(%(queue)s, %(n)s, %(worker)s, %(lease)s, %(metadata)s);

-- name: job_succeed
SELECT * FROM ledger.job_succeed(%(id)s, %(expected_version)s, %(metadata)s);

-- name: job_fail
SELECT * FROM ledger.job_fail(%(id)s, %(error)s, %(retry_at)s, %(discard)s, %(expected_version)s, %(metadata)s);

-- name: job_cancel
SELECT * FROM ledger.job_cancel(%(id)s, %(reason)s, %(expected_version)s, %(metadata)s);

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
SELECT ledger.worker_heartbeat(%(worker)s, %(lease)s) AS expires_at;

-- name: worker_stop
SELECT ledger.worker_stop(%(worker)s);

-- name: jobs_list
-- Newest first; keyset pagination on id (pass the last id seen as `before`).
SELECT * FROM ledger.jobs
WHERE (%(state)s::ledger.job_state IS NULL OR state = %(state)s::ledger.job_state)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_counts
SELECT * FROM ledger.job_counts();

-- name: metrics_refresh
SELECT ledger.metrics_refresh() AS events;

-- name: metrics_histogram
SELECT metric, kind, le, count, sum FROM ledger.metrics_histogram ORDER BY metric, kind, le;

-- name: events_appended
-- The identity's last value: O(1), where max(position) would scan (position has only a BRIN index).
SELECT coalesce((SELECT last_value FROM pg_sequences
                 WHERE schemaname = 'ledger' AND sequencename = 'events_position_seq'), 0) AS total;

-- name: job_succeed_many
SELECT * FROM ledger.job_succeed_many(
    %(ids)s::bigint[], %(versions)s::int[], %(worker)s, %(duration_ms)s::float8[], %(wait_ms)s::float8[]);

-- name: events_partitions
SELECT lo, hi, name, pruned_at FROM ledger.events_partitions ORDER BY lo;

-- name: events_prune_partition
SELECT * FROM ledger.events_prune_partition(%(lo)s, %(cutoff)s, %(purge_discarded)s);

-- name: jobs_running_for_worker
SELECT id FROM ledger.jobs WHERE state = 'running' AND worker = %(worker)s;

-- name: job_rescue_orphans
-- Jobs a live worker holds in the database but not in memory (a claim whose
-- answer was lost): rescued whatever its lease says.
SELECT id FROM ledger.job_rescue('infinity', %(ids)s, %(metadata)s);

-- name: schema_present
SELECT to_regclass('ledger.schema_version') IS NOT NULL AS present;

-- name: schema_version
SELECT max(version) AS version FROM ledger.schema_version;

-- name: schema_version_record
INSERT INTO ledger.schema_version (version) VALUES (%(version)s);

-- name: migrate_lock
-- Held to the end of the migrating transaction: two processes never apply the schema at once.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: db_now_minus
-- A cutoff on the database's clock, the one every event's `at` is written with.
SELECT now() - %(period)s::interval AS at;

-- name: lock_timeout_local
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: database_exists
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s) AS present;

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
