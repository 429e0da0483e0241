-- 0014 report rollup: what the report needs of the sessions that started in a quarter hour,
-- once every one of them has ended, kept as one row. An ended session hardly ever changes
-- again, yet the report read a million of them one by one for every summary (9 s at a million
-- sessions with their page claims). The summary now reads these rows for the quarter hours
-- they cover and the sessions themselves only for the rest (the live edge of the window, its
-- partial first and last quarter hours, and any quarter hour a change has made stale): the same
-- metrics, to the same value. The sweeper writes the rows (invigilator.analytics.roll_up);
-- the triggers below mark a row stale whenever a session it counts changes, is removed, or a
-- session is added to its quarter hour. Idempotent, like the others.
--
-- On a distributed (Citus) database the rows are not kept: the triggers would run on the
-- workers' shards, which do not hold this table. `db distribute` drops them and empties the
-- table, this migration does not create them there, and the summary reads the sessions, in
-- parallel on the shards.

-- The quarter hour a session belongs to by its start. Aligned to UTC: every time zone's offset
-- today is a whole number of quarter hours, so a quarter hour is also within one local hour and
-- day (the summary checks this per row for the zone it is asked for).
CREATE OR REPLACE FUNCTION test_session_rollup_bucket(started timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_bin('15 minutes', started, timestamptz '2000-01-01 00:00:00+00')
$$;

CREATE TABLE IF NOT EXISTS test_session_rollup (
    bucket timestamptz PRIMARY KEY,
    -- false: a session of the quarter hour changed after it was rolled up, or one was still
    -- running then; the summary reads its sessions and the sweeper rolls it up again.
    ready boolean NOT NULL,
    rolled_at timestamptz NOT NULL DEFAULT now(),
    sessions integer NOT NULL,
    completed integer NOT NULL,
    abandoned integer NOT NULL,
    manual integer NOT NULL,
    timer_expired integer NOT NULL,
    tab_close integer NOT NULL,
    admin integer NOT NULL,
    heartbeat_timeout integer NOT NULL,
    admin_terminated integer NOT NULL,
    timer_abandoned integer NOT NULL,
    paused integer NOT NULL,
    reopened integer NOT NULL,
    reopenings bigint NOT NULL,
    gave_up integer NOT NULL,
    gave_up_focus integer NOT NULL,
    devices_either integer NOT NULL,
    devices integer NOT NULL,
    addresses integer NOT NULL,
    -- Each completed session's duration in seconds, ascending; the same by whole minutes, two
    -- lists in step with it (the minute, how many: a minute's durations are one slice of the
    -- list); and their exact sum. The duration histogram adds up the minutes at any bucket
    -- width; the median and p90 find their bin in the minutes and read only that slice.
    durations double precision[] NOT NULL,
    duration_minute integer[] NOT NULL,
    duration_minute_n integer[] NOT NULL,
    duration_total numeric NOT NULL,
    -- The same for each completed session's share of its time allowed (where any was), by
    -- hundredths.
    shares double precision[] NOT NULL,
    share_bin integer[] NOT NULL,
    share_bin_n integer[] NOT NULL,
    share_total numeric NOT NULL,
    -- Sessions by sections completed, three lists in step: how many sections, how many
    -- sessions completed that many, and how many of those gave up.
    sections integer[] NOT NULL,
    sections_n integer[] NOT NULL,
    sections_gave_up integer[] NOT NULL,
    -- Each session given up: when its candidate left, and how many whole minutes into the test.
    left_at timestamptz[] NOT NULL,
    left_minute integer[] NOT NULL,
    CONSTRAINT test_session_rollup_bucket_aligned
        CHECK (bucket = test_session_rollup_bucket(bucket))
);

-- The stale rows the sweeper tries again (few; the ready ones are the bulk).
CREATE INDEX IF NOT EXISTS idx_test_session_rollup_stale ON test_session_rollup (rolled_at)
    WHERE NOT ready;

-- The sweeper and a writer agree per quarter hour through advisory locks: a writer holds the
-- quarter hour's shared until it commits, the sweeper exclusively while it reads the sessions and
-- writes their row (and, never waiting, skips a quarter hour a writer holds). So the sweeper
-- never rolls up a change still in flight, and a change made after the sweeper's read finds its
-- row and marks it stale. A transaction that changes sessions of more than 16 quarter hours (a
-- bulk load, a retention batch) takes one lock over all of them instead, exclusively, and the
-- sweeper holds that one shared: the locks a transaction holds stay few.
CREATE OR REPLACE FUNCTION test_session_rollup_lock_key(bucket timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(epoch FROM bucket) / 900)::integer
$$;

-- SECURITY DEFINER, like the outbox writer: a role allowed to change test_session marks rows
-- stale without rights on the rollup (search_path pinned to the migration's).
CREATE OR REPLACE FUNCTION test_session_rollup_stale(buckets timestamptz[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    -- quarter hours locked so far by this transaction; -1: it holds the lock over all
    held integer := coalesce(nullif(current_setting('invigilator.rollup_locks', true), ''),
                             '0')::integer;
    todo timestamptz[] := ARRAY(SELECT DISTINCT x FROM unnest(buckets) x
                                 WHERE x IS NOT NULL ORDER BY x);
    b timestamptz;
BEGIN
    IF held >= 0 AND held + cardinality(todo) > 16 THEN
        PERFORM pg_advisory_xact_lock(x'726f6c6c'::integer, -1);
        PERFORM set_config('invigilator.rollup_locks', '-1', true);
    ELSIF held >= 0 THEN
        FOREACH b IN ARRAY todo LOOP  -- in order: two writers never wait on each other crosswise
            PERFORM pg_advisory_xact_lock_shared(x'726f6c6c'::integer,
                                                 test_session_rollup_lock_key(b));
        END LOOP;
        PERFORM set_config('invigilator.rollup_locks', (held + cardinality(todo))::text, true);
    END IF;
    UPDATE test_session_rollup r SET ready = false WHERE r.bucket = ANY (todo) AND r.ready;
END $$;

CREATE OR REPLACE FUNCTION test_session_rollup_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM test_session_rollup_stale(ARRAY[test_session_rollup_bucket(OLD.test_start_time),
                                            test_session_rollup_bucket(NEW.test_start_time)]);
    RETURN NULL;
END $$;

-- Sessions added or removed by a statement: both triggers name their transition table `touched`.
CREATE OR REPLACE FUNCTION test_session_rollup_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM test_session_rollup_stale(ARRAY(SELECT test_session_rollup_bucket(r.test_start_time)
                                              FROM touched r));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION test_session_rollup_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM test_session_rollup;
    RETURN NULL;
END $$;

DO $$
BEGIN
    IF to_regclass('pg_dist_partition') IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                    WHERE c.oid = 'test_session'::regclass
                      AND EXISTS (SELECT 1 FROM pg_dist_partition p
                                   WHERE p.logicalrelid = c.oid)) THEN
            RETURN;  -- distributed: no rollup (see the top)
        END IF;
    END IF;
    -- A change of a session that counts in a row: only an ended session's, or a move of its
    -- start (a running session is never in a ready row). Heartbeats, saves and claims of running
    -- sessions meet only the WHEN. The columns are the ones the summary reads, and purged_at:
    -- retention removes a session's page claims and timeline, which the summary counts.
    CREATE OR REPLACE TRIGGER test_session_rollup_changed
        AFTER UPDATE OF status, completion_method, completed_at, test_start_time, deadline,
            sections_completed, last_heartbeat, paused_seconds, paused_at, pause_count,
            reopen_count, awaiting_candidate, purged_at
        ON test_session
        FOR EACH ROW
        WHEN (OLD.status <> 'active' OR OLD.test_start_time IS DISTINCT FROM NEW.test_start_time)
        EXECUTE FUNCTION test_session_rollup_changed();
    -- Sessions added (once per statement: a bulk load pays once), removed (erasure, retention)
    -- or all truncated.
    CREATE OR REPLACE TRIGGER test_session_rollup_added
        AFTER INSERT ON test_session REFERENCING NEW TABLE AS touched
        FOR EACH STATEMENT EXECUTE FUNCTION test_session_rollup_rows();
    CREATE OR REPLACE TRIGGER test_session_rollup_removed
        AFTER DELETE ON test_session REFERENCING OLD TABLE AS touched
        FOR EACH STATEMENT EXECUTE FUNCTION test_session_rollup_rows();
    CREATE OR REPLACE TRIGGER test_session_rollup_truncated
        AFTER TRUNCATE ON test_session
        FOR EACH STATEMENT EXECUTE FUNCTION test_session_rollup_truncated();
END $$;
