-- 0005 hostile input and personal data: the database states the rule for ids and names that
-- the API checks (src/invigilator/validation.py), staff sign-outs are recorded so a signed-out
-- cookie stops working in every worker process, and sessions can be erased (with an audit
-- record that keeps no personal data, and a `session.erased` webhook) or have their answers
-- and timeline removed after a retention period. Idempotent, like 0001 and 0002.

CREATE OR REPLACE FUNCTION pg_temp.ensure_constraint(tbl regclass, name text, def text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = tbl AND conname = name) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', tbl, name, def);
    END IF;
END $$;

-- The alphabet of candidate ids, section names and answer keys (README, "Identifiers"), with at
-- least one letter or digit so that no name is `.` or `..`.
CREATE OR REPLACE FUNCTION invigilator_is_name(name text, max_length integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT length(name) BETWEEN 1 AND max_length
       AND name ~ '^[A-Za-z0-9._:@+-]+$' AND name ~ '[A-Za-z0-9]'
$$;

-- A uuid key always has this form; only a text key needs the check. NOT VALID: rows a host
-- application made before are kept as they are; every new id is checked.
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') <> 'uuid'::regtype
       AND NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'test_session'::regclass
                          AND conname = 'test_session_candidate_id_format')
    THEN
        ALTER TABLE test_session ADD CONSTRAINT test_session_candidate_id_format
            CHECK (invigilator_is_name(candidate_id::text, 36)) NOT VALID;
    END IF;
END $$;

-- Section names and answer keys live inside jsonb. A CHECK would be evaluated on every UPDATE,
-- heartbeats included, and would have to read (de-TOAST) up to a MiB of answers each time; a
-- trigger on just these columns runs only when they are written, and looks only at a column
-- whose value changed (a row adopted with odd names can still be ended, erased or purged).
CREATE OR REPLACE FUNCTION test_session_check_names() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad boolean;
BEGIN
    SELECT EXISTS (
        SELECT FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(NEW.sections_completed) = 'array'
                  AND (TG_OP = 'INSERT' OR NEW.sections_completed IS DISTINCT FROM OLD.sections_completed)
                 THEN NEW.sections_completed ELSE '[]'::jsonb END) e
         WHERE jsonb_typeof(e) <> 'string' OR NOT invigilator_is_name(e #>> '{}', 128)
        UNION ALL
        SELECT FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(NEW.planned_sections) = 'array'
                  AND (TG_OP = 'INSERT' OR NEW.planned_sections IS DISTINCT FROM OLD.planned_sections)
                 THEN NEW.planned_sections ELSE '[]'::jsonb END) e
         WHERE jsonb_typeof(e) <> 'string' OR NOT invigilator_is_name(e #>> '{}', 128)
        UNION ALL
        SELECT FROM jsonb_object_keys(
            CASE WHEN jsonb_typeof(NEW.pending_answers) = 'object'
                  AND (TG_OP = 'INSERT' OR NEW.pending_answers IS DISTINCT FROM OLD.pending_answers)
                 THEN NEW.pending_answers ELSE '{}'::jsonb END) k
         WHERE NOT invigilator_is_name(k, 128)
    ) INTO bad;
    IF bad THEN
        RAISE EXCEPTION 'a section name or answer key is not 1-128 of [A-Za-z0-9._:@+-]'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'test_session_names_format',
                  TABLE = 'test_session';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER test_session_names_format
    BEFORE INSERT OR UPDATE OF sections_completed, planned_sections, pending_answers ON test_session
    FOR EACH ROW EXECUTE FUNCTION test_session_check_names();

-- Staff sign-outs: the dashboard cookie names its sign-in (`jti`); a signed-out one is refused
-- by every process until it would have expired anyway, then forgotten.
CREATE TABLE IF NOT EXISTS invigilator_staff_signout (
    sign_in_id  uuid        NOT NULL,
    expires_at  timestamptz NOT NULL,
    signed_out_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT invigilator_staff_signout_pkey PRIMARY KEY (sign_in_id)
);

-- Erasures: who erased a session and when, and how much was removed; never whose session it
-- was (no candidate id, no answers), so the record may be kept for as long as audits need.
CREATE TABLE IF NOT EXISTS invigilator_erasure (
    id                 bigint      GENERATED ALWAYS AS IDENTITY,
    erasure_id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    erased_at          timestamptz NOT NULL DEFAULT now(),
    actor              varchar(64) NOT NULL,
    session_status     varchar(20) NOT NULL,
    answers_removed    integer     NOT NULL,
    events_removed     integer     NOT NULL,
    deliveries_removed integer     NOT NULL,
    CONSTRAINT invigilator_erasure_pkey PRIMARY KEY (id),
    CONSTRAINT invigilator_erasure_erasure_id_key UNIQUE (erasure_id)
);

-- session.erased: a webhook about a session that no longer exists, so its delivery row names
-- no session (the foreign key to test_session allows NULL) and its payload no candidate.
ALTER TABLE webhook_delivery ALTER COLUMN candidate_id DROP NOT NULL;
ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_type_check;
ALTER TABLE webhook_delivery ADD CONSTRAINT webhook_delivery_type_check
    CHECK (type IN ('session.started', 'session.completed', 'session.abandoned',
                    'session.time_extended', 'session.silent', 'session.erased'));
ALTER TABLE webhook_endpoint DROP CONSTRAINT IF EXISTS webhook_endpoint_event_types_check;
ALTER TABLE webhook_endpoint ADD CONSTRAINT webhook_endpoint_event_types_check
    CHECK (event_types <@ ARRAY['session.started', 'session.completed', 'session.abandoned',
                                'session.time_extended', 'session.silent',
                                'session.erased']::text[]);
SELECT pg_temp.ensure_constraint('webhook_delivery', 'webhook_delivery_candidate_check',
    $c$CHECK ((candidate_id IS NULL) = (type = 'session.erased'))$c$);

-- Retention (INVIGILATOR_RETENTION_DAYS): when a session's answers and timeline were removed.
-- The partial index is what the sweeper's bounded batches walk: ended sessions not yet purged,
-- oldest end first. Heartbeats write none of its columns, so their updates stay HOT.
ALTER TABLE test_session ADD COLUMN IF NOT EXISTS purged_at timestamptz;
CREATE INDEX IF NOT EXISTS idx_test_session_retention ON test_session (completed_at)
    WHERE completed_at IS NOT NULL AND purged_at IS NULL;
