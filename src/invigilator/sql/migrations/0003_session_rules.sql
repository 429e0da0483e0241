-- 0003 session rules: each rule of a session as one SQL function over plain values, and the
-- timeline written by one trigger. docs/architecture.md lists where every rule lives.
--
-- Why plain values and not the row type: PostgreSQL inlines a SQL function whose body is one
-- expression (so a rule costs what the expression costs, also in the sweeper's scan), and a
-- distributed PostgreSQL (Citus) runs such calls on its shards, where the row type of
-- `test_session` does not exist. The clock is an argument too: a statement reads it once.
-- Idempotent, like 0001 and 0002.

-- The status each completion method leads to; NULL for a name that is no completion method.
CREATE OR REPLACE FUNCTION test_session_status_of(method text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE method
        WHEN 'manual' THEN 'completed'
        WHEN 'timer_expired' THEN 'completed'
        WHEN 'tab_close' THEN 'completed'
        WHEN 'admin' THEN 'completed'
        WHEN 'heartbeat_timeout' THEN 'abandoned'
        WHEN 'admin_terminated' THEN 'abandoned'
    END
$$;

-- Whether an ending means the candidate gave up (left, went silent, or was removed by staff)
-- rather than finished: what analytics calls "gave up" (docs/analytics.md).
CREATE OR REPLACE FUNCTION test_session_gave_up(method text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(method IN ('heartbeat_timeout', 'tab_close', 'admin_terminated'), false)
$$;

-- The constraints of 0001, restated through test_session_status_of so the method set and each
-- method's status are written once.
ALTER TABLE test_session
    DROP CONSTRAINT IF EXISTS test_session_completion_method_check,
    DROP CONSTRAINT IF EXISTS test_session_status_method_check;
ALTER TABLE test_session
    ADD CONSTRAINT test_session_completion_method_check
        CHECK (completion_method IS NULL OR test_session_status_of(completion_method) IS NOT NULL),
    -- active <=> not ended; an ended session's status is the one its method leads to.
    ADD CONSTRAINT test_session_status_method_check CHECK (CASE
        WHEN status = 'active' THEN completed_at IS NULL AND completion_method IS NULL
        ELSE completed_at IS NOT NULL
             AND coalesce(status = test_session_status_of(completion_method), false) END);

-- The context every rule is given, read once per statement in its FROM list: the clock (the
-- database's now()) and the timing policy the service runs with. `invigilator_rules(policy)`
-- for a read, `invigilator_act(actor, policy, reason)` for a change (who acts and why, for the
-- timeline trigger). `policy` is the JSON of domain.Policy.sql_params().
DO $$
BEGIN
    IF to_regtype('invigilator_rules') IS NULL THEN
        CREATE TYPE invigilator_rules AS (
            at timestamptz,
            abandon_after interval,       -- silence that ends a session with time left
            deadline_grace interval,      -- after the deadline, before the end is written
            tab_close_grace interval,     -- after a tab close, before it ends the session
            tab_close_submits boolean,    -- policy `submit`: a tab close ends it (tab_close)
            resume_gap interval);         -- a heartbeat after a longer silence logs `resumed`
    END IF;
END $$;

CREATE OR REPLACE FUNCTION invigilator_rules(policy jsonb) RETURNS invigilator_rules
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ROW(now(), (policy ->> 'abandon_after')::interval,
               (policy ->> 'deadline_grace')::interval, (policy ->> 'tab_close_grace')::interval,
               (policy ->> 'tab_close_submits')::boolean,
               (policy ->> 'resume_gap')::interval)::invigilator_rules
$$;

-- The settings are local to the transaction; a change made without them (psql, the guide's own
-- SQL) is logged with actor `sql`.
CREATE OR REPLACE FUNCTION invigilator_act(actor text, policy jsonb, reason text DEFAULT NULL)
RETURNS invigilator_rules
LANGUAGE sql VOLATILE AS $$
    SELECT invigilator_rules(policy)
      FROM (SELECT set_config('invigilator.actor', actor, true),
                   set_config('invigilator.reason', coalesce(reason, ''), true),
                   set_config('invigilator.resume_gap', coalesce(policy ->> 'resume_gap', ''),
                              true)) AS s
$$;

-- How a running session will end if nothing else happens: whichever comes first of the
-- tab-close grace running out (when the policy submits on tab close), silence with time left
-- (a session that never sent a heartbeat counts from its start), and the deadline. A tie with
-- the deadline is not "time left": the timer wins it; a tab close wins a tie with silence.
CREATE OR REPLACE FUNCTION test_session_end_method(
    deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, c invigilator_rules)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN c.tab_close_submits AND tab_closed_at < deadline
             AND tab_closed_at <= coalesce(last_heartbeat, test_start_time) + c.abandon_after
            THEN 'tab_close'
        WHEN coalesce(last_heartbeat, test_start_time) + c.abandon_after < deadline
            THEN 'heartbeat_timeout'
        ELSE 'timer_expired'
    END
$$;

-- When that end happens: what completed_at records (the earliest of the three moments).
CREATE OR REPLACE FUNCTION test_session_ends_at(
    deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, c invigilator_rules)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT least(deadline, coalesce(last_heartbeat, test_start_time) + c.abandon_after,
                 CASE WHEN c.tab_close_submits THEN tab_closed_at END)
$$;

-- When the end may be written (the session is "due"): the deadline plus its grace, so a save
-- in flight at the last second still lands; the tab close plus its grace, so a reload keeps
-- the session; the silence at once.
CREATE OR REPLACE FUNCTION test_session_due_at(
    deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, c invigilator_rules)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE test_session_end_method(deadline, last_heartbeat, test_start_time, tab_closed_at, c)
        WHEN 'tab_close' THEN tab_closed_at + c.tab_close_grace
        WHEN 'heartbeat_timeout' THEN coalesce(last_heartbeat, test_start_time) + c.abandon_after
        ELSE deadline + c.deadline_grace
    END
$$;

-- "Open": active and not yet due at the statement's clock. Every write to a running session is
-- guarded by it, so a session past its end is ended for every caller even before the sweeper.
CREATE OR REPLACE FUNCTION test_session_open(
    status text, deadline timestamptz, last_heartbeat timestamptz, test_start_time timestamptz,
    tab_closed_at timestamptz, c invigilator_rules)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT status = 'active'
       AND c.at < test_session_due_at(deadline, last_heartbeat, test_start_time, tab_closed_at, c)
$$;

-- The row-typed rule of 0001 gives way to the functions above.
DROP FUNCTION IF EXISTS test_session_due(test_session, interval, interval, interval, boolean);

-- A heartbeat after a silence longer than this logs `resumed`: the gap its statement gave
-- invigilator_act (twice the service's heartbeat interval), else 30 s.
CREATE OR REPLACE FUNCTION test_session_resume_gap() RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('invigilator.resume_gap', true), '')::interval,
                    interval '30 seconds')
$$;

-- The timeline: one event per thing that happened to a session, whoever changed the row (an
-- answer save writes its own `answers_saved`: answers are rows of their own, migration 0006).
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
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, 'started', who,
                jsonb_build_object('duration_minutes', NEW.test_duration_minutes));
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

    IF OLD.status = 'active' AND NEW.status <> 'active' THEN
        INSERT INTO test_session_event (candidate_id, type, actor, detail)
        VALUES (NEW.candidate_id, NEW.status, who,
                jsonb_strip_nulls(jsonb_build_object('method', NEW.completion_method,
                                                     'ended_at', NEW.completed_at,
                                                     'reason', why)));
    END IF;
    RETURN NULL;
END $$;

-- Two triggers, one function: the session's lifecycle, and the page's presence (a tab close, a
-- return). A heartbeat never names the columns of the first, and the second's WHEN is false for
-- an ordinary heartbeat, so the hot path pays no function call.
CREATE OR REPLACE TRIGGER test_session_timeline
    AFTER INSERT OR UPDATE OF status, completion_method, extra_minutes, sections_completed
    ON test_session
    FOR EACH ROW EXECUTE FUNCTION test_session_timeline('lifecycle');

CREATE OR REPLACE TRIGGER test_session_timeline_presence
    AFTER UPDATE OF last_heartbeat, tab_closed_at ON test_session
    FOR EACH ROW
    WHEN (OLD.status = 'active'
          AND ((OLD.tab_closed_at IS NULL) <> (NEW.tab_closed_at IS NULL)
               OR NEW.last_heartbeat - OLD.last_heartbeat > test_session_resume_gap()))
    EXECUTE FUNCTION test_session_timeline('presence');
