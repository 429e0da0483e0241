-- 0008 proctor controls: a policy of its own for each session, accommodations, pause and
-- resume, and reopening an ended session. The status set stays the guide's three: a paused or
-- reopened session is `active`, and what is special about it is in columns of its own
-- (docs/schema.md says why). Every rule of 0003 is redefined here over the new columns, still
-- one SQL function over plain values (never the row type) with the statement's context `c`,
-- and every rule takes the same columns in the same order. Idempotent, like the others.

CREATE OR REPLACE FUNCTION pg_temp.ensure_constraint(tbl regclass, name text, def text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = tbl AND conname = name) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', tbl, name, def);
    END IF;
END $$;

-- A constant default adds a column without rewriting the table; none of these is indexed, so
-- heartbeats stay HOT.
ALTER TABLE test_session
    -- The session's policy, given at start and stored whole by the service. NULL, in a row made
    -- by the guide's own SQL: the deployment's abandon threshold and tab-close policy (the
    -- statement's context), and at the deadline the guide's own `submit` (no grace).
    ADD COLUMN IF NOT EXISTS abandon_after_seconds double precision,
    ADD COLUMN IF NOT EXISTS tab_close             varchar(16),
    ADD COLUMN IF NOT EXISTS at_deadline           varchar(16),
    ADD COLUMN IF NOT EXISTS grace_seconds         double precision,
    -- Accommodations: the duration times the multiplier, plus minutes; extensions stack on top.
    ADD COLUMN IF NOT EXISTS time_multiplier       double precision NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS accommodation_minutes integer NOT NULL DEFAULT 0,
    -- Pause: the clock stands still since paused_at; paused_seconds is all the time it stood
    -- still before (pauses, the time between an end and a reopening, the wait for the page);
    -- resumed_at is when it last started again (silence and tab closes count from there).
    ADD COLUMN IF NOT EXISTS paused_at             timestamptz,
    ADD COLUMN IF NOT EXISTS paused_seconds        double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS resumed_at            timestamptz,
    -- How many times staff paused it (what analytics counts; pauses leave no other trace in
    -- the row once resumed).
    ADD COLUMN IF NOT EXISTS pause_count           integer NOT NULL DEFAULT 0,
    -- Reopen: the session waits (paused) until its page is next heard from.
    ADD COLUMN IF NOT EXISTS awaiting_candidate    boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS reopen_count          integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS reopened_at           timestamptz,
    -- What a reopening added to (or took from) the time allowed, so that N minutes are left.
    ADD COLUMN IF NOT EXISTS reopen_adjust_seconds double precision NOT NULL DEFAULT 0;

SELECT pg_temp.ensure_constraint('test_session', 'test_session_policy_check',
    $c$CHECK ((abandon_after_seconds IS NULL OR abandon_after_seconds > 0)
          AND (tab_close IS NULL OR tab_close IN ('submit', 'ignore'))
          AND (at_deadline IS NULL OR at_deadline IN ('submit', 'grace', 'abandon'))
          AND (grace_seconds IS NULL OR grace_seconds >= 0))$c$);
SELECT pg_temp.ensure_constraint('test_session', 'test_session_accommodations_range',
    $c$CHECK (time_multiplier > 0 AND time_multiplier <= 10
          AND accommodation_minutes BETWEEN 0 AND 1440)$c$);
-- Only a running session is paused; only a paused one waits for its page.
SELECT pg_temp.ensure_constraint('test_session', 'test_session_pause_check',
    $c$CHECK (paused_seconds >= 0 AND reopen_count >= 0 AND pause_count >= 0
          AND (paused_at IS NULL OR status = 'active')
          AND (NOT awaiting_candidate OR paused_at IS NOT NULL))$c$);

-- At the deadline, policy `abandon`: the session is abandoned with a method of its own.
CREATE OR REPLACE FUNCTION test_session_status_of(method text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE method
        WHEN 'manual' THEN 'completed'
        WHEN 'timer_expired' THEN 'completed'
        WHEN 'tab_close' THEN 'completed'
        WHEN 'admin' THEN 'completed'
        WHEN 'heartbeat_timeout' THEN 'abandoned'
        WHEN 'admin_terminated' THEN 'abandoned'
        WHEN 'timer_abandoned' THEN 'abandoned'
    END
$$;

-- The deadline: the duration times the multiplier, the accommodation's and the extensions'
-- minutes, and every second the clock stood still. The trigger of 0001 stores it.
CREATE OR REPLACE FUNCTION test_session_deadline_of(
    test_start_time timestamptz, test_duration_minutes integer, time_multiplier double precision,
    accommodation_minutes integer, extra_minutes integer, paused_seconds double precision,
    reopen_adjust_seconds double precision)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT test_start_time
         + (test_duration_minutes * time_multiplier + accommodation_minutes + extra_minutes)
           * interval '1 minute'
         + (paused_seconds + reopen_adjust_seconds) * interval '1 second'
$$;

CREATE OR REPLACE FUNCTION test_session_set_deadline() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.deadline := test_session_deadline_of(
        NEW.test_start_time, NEW.test_duration_minutes, NEW.time_multiplier,
        NEW.accommodation_minutes, NEW.extra_minutes, NEW.paused_seconds,
        NEW.reopen_adjust_seconds);
    RETURN NEW;
END $$;

-- A heartbeat names none of these columns: the hot path never calls this trigger.
CREATE OR REPLACE TRIGGER test_session_deadline
    BEFORE INSERT OR UPDATE OF test_start_time, test_duration_minutes, extra_minutes,
        time_multiplier, accommodation_minutes, paused_seconds, reopen_adjust_seconds
    ON test_session
    FOR EACH ROW EXECUTE FUNCTION test_session_set_deadline();

-- --- the parts the rules share ---------------------------------------------------------------

-- When the page was last heard of, for the silence rule: its last heartbeat (never: the
-- start), or the last resume, whichever is later (a pause is no silence).
CREATE OR REPLACE FUNCTION test_session_heard_at(
    last_heartbeat timestamptz, test_start_time timestamptz, resumed_at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT greatest(coalesce(last_heartbeat, test_start_time), resumed_at)
$$;

-- When a pending tab close counts from: the close, or the last resume if it closed before.
CREATE OR REPLACE FUNCTION test_session_tab_closed_since(
    tab_closed_at timestamptz, resumed_at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN tab_closed_at IS NOT NULL THEN greatest(tab_closed_at, resumed_at) END
$$;

-- The session's silence threshold (its own, else the deployment's).
CREATE OR REPLACE FUNCTION test_session_abandon_after(
    abandon_after_seconds double precision, c invigilator_rules)
RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(abandon_after_seconds * interval '1 second', c.abandon_after)
$$;

-- Policy `grace`: how long after the deadline a submit is still taken, scaled by the
-- accommodation's multiplier; nothing for the other policies.
CREATE OR REPLACE FUNCTION test_session_submit_grace(
    at_deadline text, grace_seconds double precision, time_multiplier double precision,
    c invigilator_rules)
RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN at_deadline = 'grace'
                THEN coalesce(grace_seconds, 0) * time_multiplier * interval '1 second'
                ELSE interval '0' END
$$;

-- --- the rules: each takes the same columns, in this order, and the context ---------------
-- (status, deadline, last_heartbeat, test_start_time, tab_closed_at, paused_at, resumed_at,
--  abandon_after_seconds, tab_close, at_deadline, grace_seconds, time_multiplier, c)

-- How a running session will end if nothing else happens (0003's rule, with the session's own
-- policy, silence counted from a resume, and `abandon` at the deadline).
CREATE OR REPLACE FUNCTION test_session_end_method(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN coalesce(tab_close = 'submit', c.tab_close_submits)
             AND test_session_tab_closed_since(tab_closed_at, resumed_at) < deadline
             AND test_session_tab_closed_since(tab_closed_at, resumed_at)
                 <= test_session_heard_at(last_heartbeat, test_start_time, resumed_at)
                    + test_session_abandon_after(abandon_after_seconds, c)
            THEN 'tab_close'
        WHEN test_session_heard_at(last_heartbeat, test_start_time, resumed_at)
             + test_session_abandon_after(abandon_after_seconds, c) < deadline
            THEN 'heartbeat_timeout'
        WHEN at_deadline = 'abandon' THEN 'timer_abandoned'
        ELSE 'timer_expired'
    END
$$;

-- When that end happens: what completed_at records.
CREATE OR REPLACE FUNCTION test_session_ends_at(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT least(deadline,
                 test_session_heard_at(last_heartbeat, test_start_time, resumed_at)
                 + test_session_abandon_after(abandon_after_seconds, c),
                 CASE WHEN coalesce(tab_close = 'submit', c.tab_close_submits)
                      THEN test_session_tab_closed_since(tab_closed_at, resumed_at) END)
$$;

-- When the end may be written: as in 0003, and for policy `grace` the deadline's end waits
-- the (scaled) grace too.
CREATE OR REPLACE FUNCTION test_session_due_at(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE test_session_end_method(status, deadline, last_heartbeat, test_start_time,
                                        tab_closed_at, paused_at, resumed_at,
                                        abandon_after_seconds, tab_close, at_deadline,
                                        grace_seconds, time_multiplier, c)
        WHEN 'tab_close' THEN test_session_tab_closed_since(tab_closed_at, resumed_at)
                              + c.tab_close_grace
        WHEN 'heartbeat_timeout' THEN test_session_heard_at(last_heartbeat, test_start_time,
                                                            resumed_at)
                                      + test_session_abandon_after(abandon_after_seconds, c)
        ELSE deadline + c.deadline_grace
             + test_session_submit_grace(at_deadline, grace_seconds, time_multiplier, c)
    END
$$;

-- "Open": active, and paused or not yet due. A paused session's clock stands still, so no
-- ending rule fires; its page may still beat, save what was typed, and submit.
CREATE OR REPLACE FUNCTION test_session_open(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT status = 'active'
       AND (paused_at IS NOT NULL
            OR c.at < test_session_due_at(status, deadline, last_heartbeat, test_start_time,
                                          tab_closed_at, paused_at, resumed_at,
                                          abandon_after_seconds, tab_close, at_deadline,
                                          grace_seconds, time_multiplier, c))
$$;

-- Open and taking answers: past the deadline (and its grace for saves in flight) an open
-- session takes a submit only (policy `grace`).
CREATE OR REPLACE FUNCTION test_session_takes_answers(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, paused_at timestamptz, resumed_at timestamptz,
    abandon_after_seconds double precision, tab_close text, at_deadline text,
    grace_seconds double precision, time_multiplier double precision, c invigilator_rules)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT test_session_open(status, deadline, last_heartbeat, test_start_time, tab_closed_at,
                             paused_at, resumed_at, abandon_after_seconds, tab_close,
                             at_deadline, grace_seconds, time_multiplier, c)
       AND (paused_at IS NOT NULL OR c.at < deadline + c.deadline_grace)
$$;

-- 0003's signatures give way to these (every caller passes the new columns).
DROP FUNCTION IF EXISTS test_session_open(text, timestamptz, timestamptz, timestamptz, timestamptz,
                                          invigilator_rules);
DROP FUNCTION IF EXISTS test_session_due_at(timestamptz, timestamptz, timestamptz, timestamptz,
                                            invigilator_rules);
DROP FUNCTION IF EXISTS test_session_ends_at(timestamptz, timestamptz, timestamptz, timestamptz,
                                             invigilator_rules);
DROP FUNCTION IF EXISTS test_session_end_method(timestamptz, timestamptz, timestamptz, timestamptz,
                                                invigilator_rules);

-- --- the timeline --------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION test_session_timeline() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    who text := coalesce(nullif(current_setting('invigilator.actor', true), ''), 'sql');
    why text := nullif(current_setting('invigilator.reason', true), '');
BEGIN
    IF TG_ARGV[0] = 'presence' THEN
        IF OLD.tab_closed_at IS NULL AND NEW.tab_closed_at IS NOT NULL THEN
            INSERT INTO test_session_event (candidate_id, type, actor, detail)
            VALUES (NEW.candidate_id, 'tab_closed', who, '{}'::jsonb);
        END IF;
        -- The page is back: after a tab close, or after a silence longer than the resume gap.
        IF NEW.status = 'active' AND NEW.last_heartbeat IS DISTINCT FROM OLD.last_heartbeat
           AND ((OLD.tab_closed_at IS NOT NULL AND NEW.tab_closed_at IS NULL)
                OR NEW.last_heartbeat - OLD.last_heartbeat > test_session_resume_gap()) THEN
            INSERT INTO test_session_event (candidate_id, type, actor, detail)
            VALUES (NEW.candidate_id, 'resumed', who,
                    jsonb_build_object(
                        'gap_seconds',
                        round(extract(epoch FROM NEW.last_heartbeat - OLD.last_heartbeat)::numeric, 1),
                        'after_tab_close', OLD.tab_closed_at IS NOT NULL));
        END IF;
        RETURN NULL;
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- The policy and accommodations the session runs with (a NULL policy value: the
        -- deployment's setting).
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, 'started', who,
                jsonb_build_object(
                    'duration_minutes', NEW.test_duration_minutes,
                    'policy', jsonb_strip_nulls(jsonb_build_object(
                        'abandon_after_seconds', NEW.abandon_after_seconds,
                        'tab_close', NEW.tab_close,
                        'at_deadline', NEW.at_deadline,
                        'grace_seconds', NEW.grace_seconds,
                        'pages', NEW.pages)),
                    'accommodations', jsonb_build_object(
                        'time_multiplier', NEW.time_multiplier,
                        'extra_minutes', NEW.accommodation_minutes),
                    'deadline', NEW.deadline));
        RETURN NULL;
    END IF;

    IF OLD.status <> 'active' AND NEW.status = 'active' THEN
        -- The earlier ending stays in the timeline; this opens the session again.
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, 'reopened', who,
                jsonb_strip_nulls(jsonb_build_object(
                    'minutes', round(extract(epoch FROM NEW.deadline - NEW.paused_at)::numeric / 60, 2),
                    'reason', why,
                    'previous_status', OLD.status,
                    'previous_method', OLD.completion_method,
                    'previous_ended_at', OLD.completed_at,
                    'opening', NEW.reopen_count + 1)));
        RETURN NULL;
    END IF;

    IF NEW.sections_completed IS DISTINCT FROM OLD.sections_completed THEN
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        SELECT NEW.candidate_id, 'section_completed', who,
               jsonb_build_object('section', s.section, 'count', s.n)
          FROM jsonb_array_elements_text(NEW.sections_completed) WITH ORDINALITY AS s (section, n)
         WHERE NOT OLD.sections_completed @> jsonb_build_array(s.section)
         ORDER BY s.n;
    END IF;

    IF NEW.extra_minutes > OLD.extra_minutes THEN
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, 'time_extended', who,
                jsonb_build_object('minutes', NEW.extra_minutes - OLD.extra_minutes,
                                   'reason', why, 'deadline', NEW.deadline));
    END IF;

    IF NEW.time_multiplier IS DISTINCT FROM OLD.time_multiplier
       OR NEW.accommodation_minutes IS DISTINCT FROM OLD.accommodation_minutes THEN
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, 'accommodations_changed', who,
                jsonb_build_object('time_multiplier', NEW.time_multiplier,
                                   'extra_minutes', NEW.accommodation_minutes,
                                   'reason', why, 'deadline', NEW.deadline));
    END IF;

    IF NEW.status = 'active' AND OLD.paused_at IS NULL AND NEW.paused_at IS NOT NULL THEN
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, 'paused', who,
                jsonb_build_object(
                    'reason', why,
                    'remaining_seconds',
                    round(greatest(extract(epoch FROM NEW.deadline - NEW.paused_at), 0)::numeric, 1)));
    ELSIF NEW.status = 'active' AND OLD.paused_at IS NOT NULL AND NEW.paused_at IS NULL THEN
        -- A staff resume, or (after a reopen) the page heard from again: the clock runs.
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, CASE WHEN OLD.awaiting_candidate THEN 'clock_started'
                                       ELSE 'pause_ended' END, who,
                jsonb_strip_nulls(jsonb_build_object(
                    'reason', why,
                    'paused_seconds',
                    round((NEW.paused_seconds - OLD.paused_seconds)::numeric, 1),
                    'deadline', NEW.deadline)));
    END IF;

    IF OLD.status = 'active' AND NEW.status <> 'active' THEN
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, NEW.status, who,
                jsonb_strip_nulls(jsonb_build_object('method', NEW.completion_method,
                                                     'ended_at', NEW.completed_at,
                                                     'reason', why)));
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER test_session_timeline
    AFTER INSERT OR UPDATE OF status, completion_method, extra_minutes, sections_completed,
        paused_at, time_multiplier, accommodation_minutes
    ON test_session
    FOR EACH ROW EXECUTE FUNCTION test_session_timeline('lifecycle');

-- --- webhooks ----------------------------------------------------------------------------------

ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_type_check;
ALTER TABLE webhook_delivery ADD CONSTRAINT webhook_delivery_type_check
    CHECK (type IN ('session.started', 'session.completed', 'session.abandoned',
                    'session.time_extended', 'session.silent', 'session.erased',
                    'session.paused', 'session.resumed', 'session.reopened'));
ALTER TABLE webhook_endpoint DROP CONSTRAINT IF EXISTS webhook_endpoint_event_types_check;
ALTER TABLE webhook_endpoint ADD CONSTRAINT webhook_endpoint_event_types_check
    CHECK (event_types <@ ARRAY['session.started', 'session.completed', 'session.abandoned',
                                'session.time_extended', 'session.silent', 'session.erased',
                                'session.paused', 'session.resumed',
                                'session.reopened']::text[]);

-- 0002's writer, with the new events: a reopening, a pause, a resume (or a reopened clock
-- starting); a later deadline (an extension, or more time by accommodation) is still
-- session.time_extended.
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
           webhook_session_snapshot(NEW, w.include_answers)
      FROM webhook_endpoint w
     WHERE w.active AND (w.event_types IS NULL OR event_type = ANY (w.event_types));
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER test_session_webhook_changed
    AFTER UPDATE ON test_session
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.deadline IS DISTINCT FROM NEW.deadline
          OR OLD.paused_at IS DISTINCT FROM NEW.paused_at)
    EXECUTE FUNCTION webhook_enqueue_session_change();
