-- 0012 Citus: what a distributed PostgreSQL (Citus, Azure Cosmos DB for PostgreSQL; `invigilator
-- db distribute`, docs/scaling.md) needs of the schema, in a form that costs nothing on one
-- PostgreSQL server. Idempotent, like the others.
--
-- - Citus distributes a table by a column only when every PRIMARY KEY and UNIQUE includes it,
--   and refuses NULL in it: webhook_delivery's keys gain candidate_id, which is never NULL
--   again. A session.erased delivery (0005: about a session that no longer exists) is keyed by
--   its own event id, the erasure's random id, which names no one (a CHECK says so); readers
--   still show it no candidate. The foreign key to test_session cannot hold such a key, so its
--   cascade (erasure, `DELETE FROM test_session`) becomes a trigger.
-- - The outbox trigger runs on the shard, where a row's type is the shard's
--   (test_session_102008), not test_session: the snapshot takes the row as jsonb.
-- - Citus refuses functions that are not IMMUTABLE in a distributed write's SET list, CASE,
--   COALESCE and RETURNING, and STABLE ones called with columns in its WHERE. The rules read
--   only their arguments (the clock is one), so they are IMMUTABLE in fact; declared so, and
--   with their timestamp arithmetic done in UTC (immutable operators), PostgreSQL still inlines
--   them (tests/test_rules.py).
-- - The tables of 0009 incidents and 0010 answer totals go with the session (co-located on
--   candidate_id): an incident's key gains candidate_id, and its trigger, which runs on the
--   shard, takes the incident and the session as jsonb, as the outbox trigger does.

-- webhook_delivery: every key through candidate_id, never NULL.
-- Only where there are such rows (never on a distributed database: Citus refuses any UPDATE of
-- the distribution column, even of no row).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_delivery WHERE candidate_id IS NULL) THEN
        UPDATE webhook_delivery SET candidate_id = event_id
         WHERE candidate_id IS NULL AND type = 'session.erased';
    END IF;
END $$;
ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_candidate_check;
ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_session_fk;
ALTER TABLE webhook_delivery ALTER COLUMN candidate_id SET NOT NULL;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.conrelid = 'webhook_delivery'::regclass AND c.conname = 'webhook_delivery_pkey'
           AND a.attname = 'candidate_id'
    ) THEN
        ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_pkey;
        ALTER TABLE webhook_delivery ADD CONSTRAINT webhook_delivery_pkey
            PRIMARY KEY (candidate_id, id);
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.conrelid = 'webhook_delivery'::regclass
           AND c.conname = 'webhook_delivery_event_unique' AND a.attname = 'candidate_id'
    ) THEN
        ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_event_unique;
        ALTER TABLE webhook_delivery ADD CONSTRAINT webhook_delivery_event_unique
            UNIQUE (candidate_id, endpoint_id, event_id);
    END IF;
    -- An erased session's delivery is keyed by its event id (the erasure's), nothing else.
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'webhook_delivery'::regclass
                      AND conname = 'webhook_delivery_erased_key') THEN
        ALTER TABLE webhook_delivery ADD CONSTRAINT webhook_delivery_erased_key
            CHECK (type <> 'session.erased' OR candidate_id::text = event_id::text);
    END IF;
END $$;

-- The cascade of the foreign key it replaces: a session's deliveries go with the session (they
-- hold snapshots of it). On Citus the trigger runs on the session's shard, next to them.
CREATE OR REPLACE FUNCTION webhook_delete_session_deliveries() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM webhook_delivery d
     WHERE d.candidate_id = OLD.candidate_id AND d.type <> 'session.erased';
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER test_session_webhook_erase
    AFTER DELETE ON test_session
    FOR EACH ROW EXECUTE FUNCTION webhook_delete_session_deliveries();

-- With the primary key now (candidate_id, id), the statements that name a delivery by its id
-- alone (the worker's, the staff API's) keep an index of their own.
CREATE INDEX IF NOT EXISTS idx_webhook_delivery_id ON webhook_delivery (id);

-- The session as a webhook shows it (not which page holds it, as in 0007), from the row as
-- jsonb (to_jsonb(NEW) on a shard has the table's column names, which is all this reads) and
-- its answers, NULL for an endpoint that did not ask for them. The answers come in as a value: on Citus a statement pushed down to a
-- shard (enqueue_silent) cannot call a function that reads another table.
CREATE OR REPLACE FUNCTION webhook_session_snapshot(t jsonb, answers jsonb)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT (t - 'answer_seq' - 'pending_answers' - 'tab_closed_at' - 'page_id')
           || jsonb_build_object('server_now', now())
           || CASE WHEN answers IS NOT NULL
                   THEN jsonb_build_object('pending_answers', answers)
                   ELSE '{}'::jsonb END
$$;

-- The same, reading the answers from the rows (as 0006 has it): for the outbox trigger, which
-- may read co-located rows on its shard.
CREATE OR REPLACE FUNCTION webhook_session_snapshot(t jsonb, candidate anyelement,
                                                    with_answers boolean)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT webhook_session_snapshot(
               t, CASE WHEN with_answers THEN test_session_answers(candidate) END)
$$;

-- The outbox writer as 0008 has it, but for the snapshot's argument.
CREATE OR REPLACE FUNCTION webhook_enqueue_session_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    event_type text;
    new_event_id uuid := gen_random_uuid();  -- one id for every endpoint that gets this event
BEGIN
    IF TG_OP = 'INSERT' THEN
        event_type := 'session.started';
    ELSIF OLD.status = 'active' AND NEW.status IN ('completed', 'abandoned') THEN
        event_type := 'session.' || NEW.status;
    ELSIF OLD.status <> 'active' AND NEW.status = 'active' THEN
        event_type := 'session.reopened';
    ELSIF NEW.status = 'active' AND OLD.paused_at IS NULL AND NEW.paused_at IS NOT NULL THEN
        event_type := 'session.paused';
    ELSIF NEW.status = 'active' AND OLD.paused_at IS NOT NULL AND NEW.paused_at IS NULL THEN
        event_type := 'session.resumed';
    ELSIF OLD.status = 'active' AND NEW.status = 'active' AND NEW.deadline > OLD.deadline THEN
        event_type := 'session.time_extended';
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO webhook_delivery (event_id, type, candidate_id, endpoint_id, payload)
    SELECT new_event_id, event_type, NEW.candidate_id, w.id,
           webhook_session_snapshot(to_jsonb(NEW), NEW.candidate_id, w.include_answers)
      FROM webhook_endpoint w
     WHERE w.active AND (w.event_types IS NULL OR event_type = ANY (w.event_types));
    RETURN NULL;
END $$;

DROP FUNCTION IF EXISTS webhook_session_snapshot(test_session, boolean);

-- A moment plus a span, in UTC: a day is 24 hours, so the result depends on the arguments
-- alone (timestamptz + interval is STABLE only because a day follows the session's TimeZone;
-- the policy's spans are seconds, where both agree). Immutable operators only: inlined.
CREATE OR REPLACE FUNCTION invigilator_plus(at timestamptz, span interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ((at AT TIME ZONE interval '0') + span) AT TIME ZONE interval '0'
$$;

-- The rules of 0008, the same expressions over invigilator_plus: IMMUTABLE (they read their
-- arguments only; the clock is c.at), which is what Citus needs to run them in a write. Each
-- way of ending is one boolean rule (same columns, same order), so that due_at is a searched
-- CASE over them: Citus 13.2 deparses an inlined simple CASE (`CASE x WHEN 'a'`) wrongly
-- when it evaluates a statement's functions on the coordinator (`CASE … WHEN NULL::boolean`,
-- then "operator does not exist: text = boolean" on the worker).
CREATE OR REPLACE FUNCTION test_session_status_of(method text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN method IN ('manual', 'timer_expired', 'tab_close', 'admin') THEN 'completed'
        WHEN method IN ('heartbeat_timeout', 'admin_terminated', 'timer_abandoned')
            THEN 'abandoned'
    END
$$;

CREATE OR REPLACE FUNCTION test_session_abandon_after(
    abandon_after_seconds double precision, c invigilator_rules)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(abandon_after_seconds * interval '1 second', c.abandon_after)
$$;

CREATE OR REPLACE FUNCTION test_session_submit_grace(
    at_deadline text, grace_seconds double precision, time_multiplier double precision,
    c invigilator_rules)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN at_deadline = 'grace'
                THEN coalesce(grace_seconds, 0) * time_multiplier * interval '1 second'
                ELSE interval '0' END
$$;

-- A tab close ends the session: the policy submits on it, before the deadline, and no later
-- than the silence would.
CREATE OR REPLACE FUNCTION test_session_ends_by_tab_close(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        coalesce(tab_close = 'submit', c.tab_close_submits)
        AND test_session_tab_closed_since(tab_closed_at, resumed_at) < deadline
        AND test_session_tab_closed_since(tab_closed_at, resumed_at)
            <= invigilator_plus(test_session_heard_at(last_heartbeat, test_start_time, resumed_at),
                                test_session_abandon_after(abandon_after_seconds, c)),
        false)
$$;

-- Silence ends the session with time left (a tie with the deadline is not "time left").
CREATE OR REPLACE FUNCTION test_session_ends_by_silence(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        invigilator_plus(test_session_heard_at(last_heartbeat, test_start_time, resumed_at),
                         test_session_abandon_after(abandon_after_seconds, c)) < deadline,
        false)
$$;

CREATE OR REPLACE FUNCTION test_session_end_method(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN test_session_ends_by_tab_close(status, deadline, last_heartbeat, test_start_time, tab_closed_at,
                   paused_at, resumed_at, abandon_after_seconds, tab_close, at_deadline,
                   grace_seconds, time_multiplier, c) THEN 'tab_close'
        WHEN test_session_ends_by_silence(status, deadline, last_heartbeat, test_start_time, tab_closed_at,
                   paused_at, resumed_at, abandon_after_seconds, tab_close, at_deadline,
                   grace_seconds, time_multiplier, c) THEN 'heartbeat_timeout'
        WHEN at_deadline = 'abandon' THEN 'timer_abandoned'
        ELSE 'timer_expired'
    END
$$;

CREATE OR REPLACE FUNCTION test_session_ends_at(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(deadline,
                 invigilator_plus(test_session_heard_at(last_heartbeat, test_start_time,
                                                        resumed_at),
                                  test_session_abandon_after(abandon_after_seconds, c)),
                 CASE WHEN coalesce(tab_close = 'submit', c.tab_close_submits)
                      THEN test_session_tab_closed_since(tab_closed_at, resumed_at) END)
$$;

CREATE OR REPLACE FUNCTION test_session_due_at(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN test_session_ends_by_tab_close(status, deadline, last_heartbeat, test_start_time, tab_closed_at,
                   paused_at, resumed_at, abandon_after_seconds, tab_close, at_deadline,
                   grace_seconds, time_multiplier, c)
            THEN invigilator_plus(test_session_tab_closed_since(tab_closed_at, resumed_at),
                                  c.tab_close_grace)
        WHEN test_session_ends_by_silence(status, deadline, last_heartbeat, test_start_time, tab_closed_at,
                   paused_at, resumed_at, abandon_after_seconds, tab_close, at_deadline,
                   grace_seconds, time_multiplier, c)
            THEN invigilator_plus(test_session_heard_at(last_heartbeat, test_start_time,
                                                        resumed_at),
                                  test_session_abandon_after(abandon_after_seconds, c))
        ELSE invigilator_plus(invigilator_plus(deadline, c.deadline_grace),
                              test_session_submit_grace(at_deadline, grace_seconds,
                                                        time_multiplier, c))
    END
$$;

CREATE OR REPLACE FUNCTION test_session_open(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status = 'active'
       AND (paused_at IS NOT NULL OR c.at < test_session_due_at(status, deadline, last_heartbeat, test_start_time, tab_closed_at,
                   paused_at, resumed_at, abandon_after_seconds, tab_close, at_deadline,
                   grace_seconds, time_multiplier, c))
$$;

CREATE OR REPLACE FUNCTION test_session_takes_answers(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT test_session_open(status, deadline, last_heartbeat, test_start_time, tab_closed_at,
                   paused_at, resumed_at, abandon_after_seconds, tab_close, at_deadline,
                   grace_seconds, time_multiplier, c)
       AND (paused_at IS NOT NULL OR c.at < invigilator_plus(deadline, c.deadline_grace))
$$;

-- test_session_incident (0009): its key through candidate_id, which Citus needs to distribute
-- it. The key then serves a session's incidents too (the live view's flag, erasure), so the
-- index 0009 kept for them goes.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.conrelid = 'test_session_incident'::regclass
           AND c.conname = 'test_session_incident_pkey' AND a.attname = 'candidate_id'
    ) THEN
        ALTER TABLE test_session_incident DROP CONSTRAINT IF EXISTS test_session_incident_pkey;
        ALTER TABLE test_session_incident ADD CONSTRAINT test_session_incident_pkey
            PRIMARY KEY (candidate_id, id);
    END IF;
END $$;
DROP INDEX IF EXISTS idx_test_session_incident_session;

-- The incident as the timeline and the webhook show it (0009's), from the row as jsonb: on a
-- shard NEW has the shard's row type (test_session_incident_102040), which no function of
-- the table's type takes.
CREATE OR REPLACE FUNCTION test_session_incident_json(i jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object('id', i -> 'id', 'at', i -> 'at', 'actor', i -> 'actor',
                              'severity', i -> 'severity', 'reason_code', i -> 'reason_code',
                              'note', i -> 'note')
$$;

-- 0009's trigger, with the session's snapshot from its row as jsonb (webhook_session_snapshot
-- above): the session is read by its key, on its shard.
CREATE OR REPLACE FUNCTION test_session_incident_recorded() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    new_event_id uuid := gen_random_uuid();  -- one id for every endpoint that gets this event
    incident jsonb := test_session_incident_json(to_jsonb(NEW));
    session jsonb;
BEGIN
    INSERT INTO test_session_event (candidate_id, type, actor, detail, at)
    VALUES (NEW.candidate_id, 'incident', NEW.actor,
            jsonb_build_object('incident_id', NEW.id, 'severity', NEW.severity,
                               'reason_code', NEW.reason_code, 'note', NEW.note), NEW.at);
    IF EXISTS (SELECT FROM webhook_endpoint w
                WHERE w.active
                  AND (w.event_types IS NULL OR 'session.flagged' = ANY (w.event_types))) THEN
        SELECT to_jsonb(t) INTO session FROM test_session t WHERE t.candidate_id = NEW.candidate_id;
        INSERT INTO webhook_delivery (event_id, type, candidate_id, endpoint_id, payload)
        SELECT new_event_id, 'session.flagged', NEW.candidate_id, w.id,
               webhook_session_snapshot(session, NEW.candidate_id, w.include_answers)
               || jsonb_build_object('incident', incident)
          FROM webhook_endpoint w
         WHERE w.active AND (w.event_types IS NULL OR 'session.flagged' = ANY (w.event_types));
    END IF;
    RETURN NULL;
END $$;

DROP FUNCTION IF EXISTS test_session_incident_json(test_session_incident);
