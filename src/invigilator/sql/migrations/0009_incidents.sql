-- 0009 incidents: staff or the host application record an irregularity on a session (a
-- severity, a reason code, a note). An incident is a row of its own, not a column of the
-- session: a session may have many, they are recorded on running and ended sessions alike,
-- and recording one changes nothing of the session's clock or outcome. Its trigger writes
-- the timeline event and the `session.flagged` webhook in the same transaction, whoever
-- inserts it (the service, or psql). Idempotent, like 0001.

CREATE TABLE IF NOT EXISTS test_session_incident (
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    candidate_id varchar(36) NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    -- Who recorded it: what invigilator_act set for the transaction, else (psql) `sql`.
    actor        varchar(64) NOT NULL
                 DEFAULT coalesce(nullif(current_setting('invigilator.actor', true), ''), 'sql'),
    severity     varchar(6)  NOT NULL,
    reason_code  varchar(64) NOT NULL,
    -- Free text by staff: emptied by the retention sweep (it may name people), while the
    -- severity and the reason code stay for the counts.
    note         text        NOT NULL DEFAULT '',
    CONSTRAINT test_session_incident_pkey PRIMARY KEY (id)
);

-- A host app keyed by uuid: follow test_session's key type, as test_session_event does.
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') = 'uuid'::regtype
       AND (SELECT atttypid FROM pg_attribute
             WHERE attrelid = 'test_session_incident'::regclass AND attname = 'candidate_id') <> 'uuid'::regtype
    THEN
        ALTER TABLE test_session_incident ALTER COLUMN candidate_id TYPE uuid USING candidate_id::uuid;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION pg_temp.ensure_constraint(tbl regclass, name text, def text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = tbl AND conname = name) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', tbl, name, def);
    END IF;
END $$;

-- The same rules validation.py applies before anything is written (severity, a reason code
-- of the name alphabet, a bounded note).
SELECT pg_temp.ensure_constraint('test_session_incident', 'test_session_incident_severity_check',
    $c$CHECK (severity IN ('low', 'medium', 'high'))$c$);
SELECT pg_temp.ensure_constraint('test_session_incident', 'test_session_incident_reason_code_check',
    $c$CHECK (invigilator_is_name(reason_code, 64))$c$);
SELECT pg_temp.ensure_constraint('test_session_incident', 'test_session_incident_note_check',
    $c$CHECK (length(note) <= 2000)$c$);
-- Right to erasure: the incidents go with the session.
SELECT pg_temp.ensure_constraint('test_session_incident', 'test_session_incident_session_fk',
    $c$FOREIGN KEY (candidate_id) REFERENCES test_session (candidate_id) ON DELETE CASCADE$c$);

-- A session's incidents (the live view's flag, erasure); the report's window reads the
-- incidents since its start (an incident is never older than its session).
CREATE INDEX IF NOT EXISTS idx_test_session_incident_session
    ON test_session_incident (candidate_id, id);
CREATE INDEX IF NOT EXISTS idx_test_session_incident_at ON test_session_incident (at);

-- session.flagged joins the webhook event types (the lists of 0008, plus it).
ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS webhook_delivery_type_check;
ALTER TABLE webhook_delivery ADD CONSTRAINT webhook_delivery_type_check
    CHECK (type IN ('session.started', 'session.completed', 'session.abandoned',
                    'session.time_extended', 'session.silent', 'session.erased',
                    'session.paused', 'session.resumed', 'session.reopened',
                    'session.flagged'));
ALTER TABLE webhook_endpoint DROP CONSTRAINT IF EXISTS webhook_endpoint_event_types_check;
ALTER TABLE webhook_endpoint ADD CONSTRAINT webhook_endpoint_event_types_check
    CHECK (event_types <@ ARRAY['session.started', 'session.completed', 'session.abandoned',
                                'session.time_extended', 'session.silent', 'session.erased',
                                'session.paused', 'session.resumed', 'session.reopened',
                                'session.flagged']::text[]);

-- The incident as the timeline and the webhook show it.
CREATE OR REPLACE FUNCTION test_session_incident_json(i test_session_incident) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', i.id, 'at', i.at, 'actor', i.actor, 'severity', i.severity,
                              'reason_code', i.reason_code, 'note', i.note)
$$;

-- One incident: its timeline event, and one session.flagged delivery per subscribed endpoint
-- (the session as it is now, with the incident). SECURITY DEFINER, like the outbox writer of
-- 0002: a role allowed to record incidents needs no rights on the event or webhook tables.
CREATE OR REPLACE FUNCTION test_session_incident_recorded() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    new_event_id uuid := gen_random_uuid();  -- one id for every endpoint that gets this event
    incident jsonb := test_session_incident_json(NEW);
BEGIN
    INSERT INTO test_session_event (candidate_id, type, actor, detail, at)
    VALUES (NEW.candidate_id, 'incident', NEW.actor,
            jsonb_build_object('incident_id', NEW.id, 'severity', NEW.severity,
                               'reason_code', NEW.reason_code, 'note', NEW.note), NEW.at);
    INSERT INTO webhook_delivery (event_id, type, candidate_id, endpoint_id, payload)
    SELECT new_event_id, 'session.flagged', t.candidate_id, w.id,
           webhook_session_snapshot(t, w.include_answers) || jsonb_build_object('incident', incident)
      FROM test_session t, webhook_endpoint w
     WHERE t.candidate_id = NEW.candidate_id
       AND w.active AND (w.event_types IS NULL OR 'session.flagged' = ANY (w.event_types));
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER test_session_incident_recorded
    AFTER INSERT ON test_session_incident
    FOR EACH ROW EXECUTE FUNCTION test_session_incident_recorded();
