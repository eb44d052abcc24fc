-- Upgrade a version-1 ledger to version 2: ledger.events becomes partitioned
-- by job id range (for retention). The existing table is kept as it is and
-- attached as the partition of every job id taken so far, so no event is
-- copied or rewritten; `ledger prune` can rewrite it like any partition.
-- After this script, `ledger migrate` re-creates every function from
-- schema.sql's `functions` section.

-- `ledger migrate` has dropped every ledger function before this script
-- runs: some take ledger.events' row type, which the rename below would
-- otherwise leave them holding.

ALTER TABLE ledger.events RENAME TO events_v1;
ALTER INDEX ledger.events_pkey RENAME TO events_v1_pkey;
ALTER INDEX ledger.events_position_brin RENAME TO events_v1_position_brin;

CREATE TABLE ledger.events (
    position  bigint GENERATED ALWAYS AS IDENTITY,
    job_id    bigint NOT NULL,
    version   int NOT NULL CONSTRAINT events_version_check CHECK (version >= 1),
    type      ledger.event_type NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    data      jsonb NOT NULL DEFAULT '{}',
    metadata  jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT events_pkey PRIMARY KEY (job_id, version)
) PARTITION BY RANGE (job_id);
CREATE INDEX events_position_brin ON ledger.events USING brin (position);

-- Positions go on from where the old table stopped.
SELECT setval(pg_get_serial_sequence('ledger.events', 'position'),
              greatest((SELECT max(position) FROM ledger.events_v1), 1),
              (SELECT max(position) FROM ledger.events_v1) IS NOT NULL);
ALTER TABLE ledger.events_v1 ALTER COLUMN position DROP IDENTITY;

CREATE TABLE ledger.events_partitioning (
    id             int PRIMARY KEY CHECK (id = 1),
    size           bigint NOT NULL CHECK (size >= 10),
    covered_until  bigint NOT NULL
);
CREATE TABLE ledger.events_partitions (
    lo         bigint PRIMARY KEY,
    hi         bigint NOT NULL CHECK (hi > lo),
    name       text NOT NULL UNIQUE,
    pruned_at  timestamptz
);

-- The old table covers every job id the sequence has handed out (ids start
-- at 1; 0 as its lower bound also admits nothing that exists).
INSERT INTO ledger.events_partitioning
SELECT 1, 1000000, s.last_value + 1 FROM ledger.job_id_seq s;
ALTER TABLE ledger.events_v1 RENAME TO events_0;
DO $$
DECLARE
    hi bigint := (SELECT covered_until FROM ledger.events_partitioning);
BEGIN
    EXECUTE format('ALTER TABLE ledger.events ATTACH PARTITION ledger.events_0 FOR VALUES FROM (0) TO (%s)', hi);
    INSERT INTO ledger.events_partitions (lo, hi, name) VALUES (0, hi, 'events_0');
END $$;
-- Its TRUNCATE trigger comes with the functions (the end of schema.sql).
