-- 0001 test_session: the table of the setup guide, its event log, constraints, indexes and
-- triggers. Idempotent on purpose: run on an empty database it creates everything; run on a
-- database where test_session was made from the guide's own SQL (TIMESTAMP columns, its own
-- constraints and indexes, rows in it) it upgrades that table in place without losing a row.

-- Prerequisites, in the guide's words: the candidate table must exist with a usable key.
DO $$
DECLARE
    key_type text;
    key_attnum smallint;
BEGIN
    IF to_regclass('candidate') IS NULL THEN
        RAISE EXCEPTION 'relation "candidate" does not exist'
            USING HINT = 'Create the candidate table first: `invigilator db upgrade --create-candidate-table` '
                         'creates a minimal one, or point DATABASE_URL at the host application''s database.';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod), a.attnum INTO key_type, key_attnum
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass('candidate') AND a.attname = 'candidate_id' AND NOT a.attisdropped;
    IF key_type IS NULL THEN
        RAISE EXCEPTION 'column "candidate_id" does not exist in candidate'
            USING HINT = 'Check the candidate table structure: test_session references candidate(candidate_id).';
    END IF;
    IF key_type <> 'uuid' AND key_type <> 'text' AND key_type NOT LIKE 'character varying%' THEN
        RAISE EXCEPTION 'candidate.candidate_id has type %, which test_session cannot reference', key_type
            USING HINT = 'Supported key types: varchar(n), text, uuid.';
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_index i
         WHERE i.indrelid = to_regclass('candidate') AND i.indisunique AND i.indpred IS NULL
           AND i.indnkeyatts = 1 AND i.indkey[0] = key_attnum
    ) THEN
        RAISE EXCEPTION 'candidate.candidate_id is not unique, so test_session cannot reference it'
            USING HINT = 'Make candidate_id the primary key of candidate, or add a UNIQUE constraint on it.';
    END IF;
END $$;

-- Adds a named constraint unless one of that name exists: keeps this file re-runnable.
CREATE OR REPLACE FUNCTION pg_temp.ensure_constraint(tbl regclass, name text, def text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = tbl AND conname = name) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', tbl, name, def);
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS test_session (
    candidate_id          varchar(36) NOT NULL,
    test_start_time       timestamptz NOT NULL DEFAULT now(),
    test_duration_minutes integer     NOT NULL DEFAULT 60,
    last_heartbeat        timestamptz,
    last_activity         timestamptz,
    status                varchar(20) NOT NULL DEFAULT 'active',
    completion_method     varchar(50),
    completed_at          timestamptz,
    sections_completed    jsonb       NOT NULL DEFAULT '[]'::jsonb,
    pending_answers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT test_session_pkey PRIMARY KEY (candidate_id)
);

-- Room on every page for the next version of a row, so a heartbeat's UPDATE can stay on the
-- same page (HOT: no index entry written). Measured: 88% HOT at 100, 98% at 90.
ALTER TABLE test_session SET (fillfactor = 90);

-- Adoption: the guide says TIMESTAMP; a naive timestamp written by CURRENT_TIMESTAMP is the
-- server's local time, so it is read in the session's TimeZone (the server default unless
-- PGTZ says otherwise), exactly as PostgreSQL's own timestamp -> timestamptz cast does.
DO $$
DECLARE
    col text;
BEGIN
    FOREACH col IN ARRAY ARRAY['test_start_time', 'last_heartbeat', 'last_activity', 'completed_at',
                               'created_at', 'updated_at'] LOOP
        IF (SELECT atttypid FROM pg_attribute
             WHERE attrelid = 'test_session'::regclass AND attname = col) = 'timestamp'::regtype THEN
            EXECUTE format('ALTER TABLE test_session ALTER COLUMN %I TYPE timestamptz', col);
        END IF;
    END LOOP;
END $$;

-- Columns beyond the guide (each explained in docs/schema.md).
ALTER TABLE test_session
    ADD COLUMN IF NOT EXISTS extra_minutes integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS deadline      timestamptz,
    ADD COLUMN IF NOT EXISTS tab_closed_at timestamptz,
    ADD COLUMN IF NOT EXISTS answer_seq    jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS planned_sections jsonb;

-- A host app keyed by uuid: test_session follows its key type so the foreign key can exist.
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = to_regclass('candidate') AND attname = 'candidate_id' AND NOT attisdropped)
       = 'uuid'::regtype
       AND (SELECT atttypid FROM pg_attribute
             WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') <> 'uuid'::regtype
    THEN
        ALTER TABLE test_session ALTER COLUMN candidate_id TYPE uuid USING candidate_id::uuid;
    END IF;
END $$;

-- The event log: append-only, one row per thing that happened to a session (never per heartbeat).
CREATE TABLE IF NOT EXISTS test_session_event (
    candidate_id varchar(36) NOT NULL,
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    type         varchar(32) NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        varchar(64) NOT NULL DEFAULT 'system',
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- candidate_id first: a session's timeline is one index range, and the key is the
    -- distribution column should the tables ever be sharded (docs/scaling.md).
    CONSTRAINT test_session_event_pkey PRIMARY KEY (candidate_id, id)
);

DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') = 'uuid'::regtype
       AND (SELECT atttypid FROM pg_attribute
             WHERE attrelid = 'test_session_event'::regclass AND attname = 'candidate_id') <> 'uuid'::regtype
    THEN
        ALTER TABLE test_session_event ALTER COLUMN candidate_id TYPE uuid USING candidate_id::uuid;
    END IF;
END $$;

-- The guide's own CHECKs on status / completion_method (whatever it named them) allow a
-- different method set; they give way to the named ones below.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname FROM pg_constraint
         WHERE conrelid = 'test_session'::regclass AND contype = 'c'
           AND conname NOT LIKE 'test\_session\_%'
           AND (pg_get_constraintdef(oid) LIKE '%status%' OR pg_get_constraintdef(oid) LIKE '%completion_method%')
    LOOP
        EXECUTE format('ALTER TABLE test_session DROP CONSTRAINT %I', c.conname);
    END LOOP;
    -- Likewise a foreign key to candidate under another name, whose ON DELETE is unknown.
    FOR c IN
        SELECT conname FROM pg_constraint
         WHERE conrelid = 'test_session'::regclass AND contype = 'f'
           AND conname <> 'test_session_candidate_fk'
    LOOP
        EXECUTE format('ALTER TABLE test_session DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$;

-- Adoption: rows that break the rules below are kept, normalised, and their original values
-- recorded as an `adopted` event, so nothing is lost and every change can be traced.
CREATE TEMP TABLE adopt_violations ON COMMIT DROP AS
SELECT t.candidate_id, to_jsonb(t) AS original
  FROM test_session t
 WHERE t.status IS NULL
    OR t.status NOT IN ('active', 'completed', 'abandoned')
    OR (t.completion_method IS NOT NULL AND t.completion_method NOT IN
        ('manual', 'timer_expired', 'tab_close', 'admin', 'heartbeat_timeout', 'admin_terminated'))
    OR (t.status = 'active') IS DISTINCT FROM (t.completed_at IS NULL AND t.completion_method IS NULL)
    OR (t.status = 'completed' AND t.completion_method IN ('heartbeat_timeout', 'admin_terminated'))
    OR (t.status = 'abandoned' AND t.completion_method IN ('manual', 'timer_expired', 'tab_close', 'admin'))
    OR t.test_duration_minutes IS NULL OR t.test_duration_minutes NOT BETWEEN 1 AND 1440
    OR t.test_start_time IS NULL
    OR jsonb_typeof(t.sections_completed) IS DISTINCT FROM 'array'
    OR jsonb_typeof(t.pending_answers) IS DISTINCT FROM 'object';

INSERT INTO test_session_event (candidate_id, type, actor, detail)
SELECT candidate_id, 'adopted', 'migration', jsonb_build_object('original', original)
  FROM adopt_violations;

ALTER TABLE test_session DISABLE TRIGGER USER;  -- normalising is not a change by anybody

UPDATE test_session t SET
    test_start_time = coalesce(t.test_start_time, t.created_at, now()),
    test_duration_minutes = least(greatest(coalesce(t.test_duration_minutes, 60), 1), 1440),
    sections_completed = CASE
        WHEN jsonb_typeof(t.sections_completed) = 'array' THEN t.sections_completed
        WHEN t.sections_completed IS NULL THEN '[]'::jsonb
        ELSE jsonb_build_array(t.sections_completed) END,
    pending_answers = CASE WHEN jsonb_typeof(t.pending_answers) = 'object'
        THEN t.pending_answers ELSE '{}'::jsonb END,
    -- An unknown method is dropped (its value is in the adopted event); an end with no method
    -- or no time gets the plainest one consistent with its status.
    status = CASE
        WHEN t.status IN ('completed', 'abandoned') THEN t.status
        WHEN t.completed_at IS NOT NULL OR t.completion_method IS NOT NULL THEN
            CASE WHEN t.completion_method IN ('heartbeat_timeout', 'admin_terminated', 'abandoned')
                 THEN 'abandoned' ELSE 'completed' END
        ELSE 'active' END
  FROM adopt_violations v
 WHERE v.candidate_id = t.candidate_id;

UPDATE test_session t SET
    completion_method = CASE
        WHEN t.status = 'completed' AND t.completion_method IN ('manual', 'timer_expired', 'tab_close', 'admin')
            THEN t.completion_method
        WHEN t.status = 'abandoned' AND t.completion_method IN ('heartbeat_timeout', 'admin_terminated')
            THEN t.completion_method
        WHEN t.status = 'completed' THEN 'manual'
        WHEN t.status = 'abandoned' THEN 'heartbeat_timeout'
        END,
    completed_at = CASE WHEN t.status = 'active' THEN NULL
        ELSE coalesce(t.completed_at, t.updated_at, t.last_heartbeat, t.test_start_time) END
  FROM adopt_violations v
 WHERE v.candidate_id = t.candidate_id;

-- deadline: the seed's "start + duration" made storable and indexable. `timestamptz + interval`
-- is not immutable, so it cannot be a generated column; a trigger keeps it instead.
UPDATE test_session
   SET deadline = test_start_time + make_interval(mins => test_duration_minutes + extra_minutes)
 WHERE deadline IS NULL;

ALTER TABLE test_session ENABLE TRIGGER USER;

ALTER TABLE test_session
    ALTER COLUMN test_start_time SET NOT NULL,
    ALTER COLUMN test_start_time SET DEFAULT now(),
    ALTER COLUMN test_duration_minutes SET NOT NULL,
    ALTER COLUMN test_duration_minutes SET DEFAULT 60,
    ALTER COLUMN status SET NOT NULL,
    ALTER COLUMN status SET DEFAULT 'active',
    ALTER COLUMN sections_completed SET NOT NULL,
    ALTER COLUMN sections_completed SET DEFAULT '[]'::jsonb,
    ALTER COLUMN pending_answers SET NOT NULL,
    ALTER COLUMN pending_answers SET DEFAULT '{}'::jsonb,
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN updated_at SET NOT NULL,
    ALTER COLUMN updated_at SET DEFAULT now(),
    ALTER COLUMN deadline SET NOT NULL;

SELECT pg_temp.ensure_constraint('test_session', 'test_session_status_check',
    $c$CHECK (status IN ('active', 'completed', 'abandoned'))$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_completion_method_check',
    $c$CHECK (completion_method IS NULL OR completion_method IN
        ('manual', 'timer_expired', 'tab_close', 'admin', 'heartbeat_timeout', 'admin_terminated'))$c$);
-- active <=> not ended; and each method belongs to one status (docs/architecture.md; restated through test_session_status_of in 0003).
SELECT pg_temp.ensure_constraint('test_session', 'test_session_status_method_check',
    $c$CHECK (
        (status = 'active' AND completed_at IS NULL AND completion_method IS NULL)
     OR (status = 'completed' AND completed_at IS NOT NULL
         AND completion_method IN ('manual', 'timer_expired', 'tab_close', 'admin'))
     OR (status = 'abandoned' AND completed_at IS NOT NULL
         AND completion_method IN ('heartbeat_timeout', 'admin_terminated')))$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_duration_range',
    $c$CHECK (test_duration_minutes BETWEEN 1 AND 1440)$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_extra_minutes_range',
    $c$CHECK (extra_minutes BETWEEN 0 AND 1440)$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_sections_is_array',
    $c$CHECK (jsonb_typeof(sections_completed) = 'array')$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_answers_is_object',
    $c$CHECK (jsonb_typeof(pending_answers) = 'object')$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_planned_sections_is_array',
    $c$CHECK (planned_sections IS NULL OR jsonb_typeof(planned_sections) = 'array')$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_answer_seq_is_object',
    $c$CHECK (jsonb_typeof(answer_seq) = 'object')$c$);
-- Right to erasure: deleting a candidate deletes their session and its events.
SELECT pg_temp.ensure_constraint('test_session', 'test_session_candidate_fk',
    $c$FOREIGN KEY (candidate_id) REFERENCES candidate (candidate_id) ON DELETE CASCADE$c$);
SELECT pg_temp.ensure_constraint('test_session_event', 'test_session_event_session_fk',
    $c$FOREIGN KEY (candidate_id) REFERENCES test_session (candidate_id) ON DELETE CASCADE$c$);
SELECT pg_temp.ensure_constraint('test_session_event', 'test_session_event_detail_is_object',
    $c$CHECK (jsonb_typeof(detail) = 'object')$c$);

-- Indexes. The guide's three, shaped for the queries that use them (docs/schema.md):
CREATE INDEX IF NOT EXISTS idx_test_session_status ON test_session (status);
CREATE INDEX IF NOT EXISTS idx_test_session_test_start_time ON test_session (test_start_time);
-- A btree on last_heartbeat makes every heartbeat UPDATE non-HOT (the column it writes would be
-- indexed). BRIN is a summarizing index, which PostgreSQL 16+ lets HOT updates ignore; the
-- guide's "no heartbeat for 5 minutes" query is served by idx_test_session_active instead.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_indexes WHERE tablename = 'test_session'
                AND indexname = 'idx_test_session_last_heartbeat' AND indexdef NOT LIKE '%USING brin%') THEN
        DROP INDEX idx_test_session_last_heartbeat;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS idx_test_session_last_heartbeat ON test_session USING brin (last_heartbeat);
-- The live set: what "find active", "find abandoned" and the sweeper scan. Its size is the
-- number of running sessions, not the table's, and deadline rarely changes (HOT-friendly).
CREATE INDEX IF NOT EXISTS idx_test_session_active ON test_session (deadline) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS idx_test_session_event_type_at ON test_session_event (type, at);
-- "Did the candidate lose focus before leaving?" (analytics) probes only these few events;
-- a small partial index keeps that probe cheap on a log of millions of rows.
CREATE INDEX IF NOT EXISTS idx_test_session_event_focus
    ON test_session_event (candidate_id, at) WHERE type IN ('focus_lost', 'tab_hidden');

-- Triggers: updated_at on every update (the guide's), and the stored deadline.
CREATE OR REPLACE FUNCTION test_session_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER test_session_updated_at
    BEFORE UPDATE ON test_session
    FOR EACH ROW EXECUTE FUNCTION test_session_set_updated_at();

CREATE OR REPLACE FUNCTION test_session_set_deadline() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.deadline := NEW.test_start_time
        + make_interval(mins => NEW.test_duration_minutes + NEW.extra_minutes);
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER test_session_deadline
    BEFORE INSERT OR UPDATE OF test_start_time, test_duration_minutes, extra_minutes ON test_session
    FOR EACH ROW EXECUTE FUNCTION test_session_set_deadline();

-- When an active session is due to end, and how: the one place this rule lives. Whichever
-- moment comes first decides: the tab-close grace running out (policy `submit`), silence with
-- time left (the abandon threshold; a session that never sent a heartbeat counts from its
-- start), or the deadline. `ends_at` becomes completed_at; `due_at` is when the end may be
-- written (the deadline plus its grace, so a save in flight at the last second still lands).
-- RETURNS TABLE so the planner inlines it into the sweeper's scan.
CREATE OR REPLACE FUNCTION test_session_due(
    t test_session, abandon_after interval, deadline_grace interval,
    tab_close_grace interval, tab_close_submits boolean)
RETURNS TABLE (method text, ends_at timestamptz, due_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT e.method, e.ends_at, e.due_at
      FROM (VALUES
              ('tab_close', t.tab_closed_at, t.tab_closed_at + tab_close_grace,
               tab_close_submits AND t.tab_closed_at IS NOT NULL),
              ('heartbeat_timeout', coalesce(t.last_heartbeat, t.test_start_time) + abandon_after,
               coalesce(t.last_heartbeat, t.test_start_time) + abandon_after, true),
              ('timer_expired', t.deadline, t.deadline + deadline_grace, true)
           ) AS e (method, ends_at, due_at, applies)
     WHERE e.applies AND e.ends_at <= t.deadline
     ORDER BY e.ends_at, e.method <> 'timer_expired'  -- a tie with the deadline is not "time left"
     LIMIT 1
$$;
