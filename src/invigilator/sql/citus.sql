-- The statements of `invigilator db distribute` and of `db verify`'s distribution checks
-- (invigilator.db.distribute), for a Citus coordinator (docs/scaling.md). Each block: a
-- `-- name --` header, a one-line description, then one statement.

-- citus_version --
-- The citus extension's version in this database; no row when it is not installed.
SELECT extversion FROM pg_extension WHERE extname = 'citus';

-- citus_tables --
-- How each of our tables is placed now: distributed (by which column, in which co-location
-- group), reference, or local (absent).
SELECT table_name::text AS table_name, citus_table_type AS kind,
       distribution_column AS column_name, colocation_id, shard_count
  FROM citus_tables
 WHERE table_name::text = ANY (%(tables)s::text[]);

-- worker_count --
-- The nodes that hold shards: distributing to none would leave every shard on the coordinator.
SELECT count(*) AS workers FROM pg_dist_node WHERE isactive AND shouldhaveshards AND noderole = 'primary';

-- allow_triggers --
-- The triggers on test_session (deadline, timeline, outbox) write co-located rows from the
-- shard; Citus refuses to distribute a table with triggers unless told that this is intended.
SET LOCAL citus.enable_unsafe_triggers = on;

-- sequential --
-- Distributing tables with foreign keys to a reference table inside one transaction needs one
-- connection per node (Citus refuses the parallel mode there).
SET LOCAL citus.multi_shard_modify_mode = 'sequential';

-- drop_rollup --
-- The report's rollup is not kept on a distributed database (migration 0014): its triggers would
-- run on the shards, where the table is not. The summary then reads the sessions, on the shards.
DO $$
BEGIN
    DROP TRIGGER IF EXISTS test_session_rollup_changed ON test_session;
    DROP TRIGGER IF EXISTS test_session_rollup_added ON test_session;
    DROP TRIGGER IF EXISTS test_session_rollup_removed ON test_session;
    DROP TRIGGER IF EXISTS test_session_rollup_truncated ON test_session;
    IF to_regclass('test_session_rollup') IS NOT NULL THEN
        DELETE FROM test_session_rollup;
    END IF;
END $$;

-- create_reference_table --
-- A table every node holds whole (webhook_endpoint: small, read by every shard's outbox trigger).
SELECT create_reference_table(%(table)s);

-- create_distributed_table --
-- A table sharded by candidate_id; `colocate_with` puts a session's rows on one shard group.
SELECT create_distributed_table(%(table)s, 'candidate_id', colocate_with => %(colocate_with)s);

-- drop_endpoint_fk --
-- Before webhook_endpoint becomes a reference table: Citus would otherwise first turn every
-- local table linked to it by foreign keys into a "citus local" table, and refuses the link
-- from webhook_delivery to the already distributed test_session. Re-added afterwards.
ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_endpoint_fk;

-- add_endpoint_fk --
-- Migration 0002's foreign key, between the distributed deliveries and the reference endpoints.
ALTER TABLE webhook_delivery ADD CONSTRAINT webhook_delivery_endpoint_fk
    FOREIGN KEY (endpoint_id) REFERENCES webhook_endpoint (id) ON DELETE CASCADE;
