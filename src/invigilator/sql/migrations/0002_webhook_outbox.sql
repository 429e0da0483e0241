-- 0002 webhook outbox: webhook endpoints, and the outbox that doubles as the delivery log.
-- A trigger on test_session enqueues one delivery per subscribed endpoint in the same
-- transaction as the change itself, so whatever writes the change (the service, the sweeper,
-- a psql user running the guide's own UPDATE) cannot skip it, and a crash between the change
-- and its delivery loses nothing. Idempotent, like 0001. See the README's Webhooks section.

CREATE TABLE IF NOT EXISTS webhook_endpoint (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    url             text        NOT NULL,
    -- NULL only for the endpoint configured by INVIGILATOR_WEBHOOK_URL, whose secret stays in
    -- the environment (INVIGILATOR_WEBHOOK_SECRET) and is never written here.
    secret          text,
    -- NULL: every event type.
    event_types     text[],
    include_answers boolean     NOT NULL DEFAULT false,
    from_env        boolean     NOT NULL DEFAULT false,
    active          boolean     NOT NULL DEFAULT true,
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoint_pkey PRIMARY KEY (id)
);

-- One row per event per endpoint: the outbox while `pending`, the delivery log afterwards.
CREATE TABLE IF NOT EXISTS webhook_delivery (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    -- The body's `id`: the same for every endpoint that gets this event; receivers dedupe on it.
    event_id        uuid        NOT NULL,
    type            varchar(32) NOT NULL,
    candidate_id    varchar(36) NOT NULL,
    endpoint_id     bigint      NOT NULL,
    -- The session as it was when the event happened (the API's shape is rendered from it).
    payload         jsonb       NOT NULL,
    -- session.silent only: the heartbeat (or start) the silence began at — one event per silence.
    silent_since    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          varchar(16) NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    CONSTRAINT webhook_delivery_pkey PRIMARY KEY (id)
);

-- A host app keyed by uuid: follow test_session's key type, as test_session_event does.
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') = 'uuid'::regtype
       AND (SELECT atttypid FROM pg_attribute
             WHERE attrelid = 'webhook_delivery'::regclass AND attname = 'candidate_id') <> 'uuid'::regtype
    THEN
        ALTER TABLE webhook_delivery ALTER COLUMN candidate_id TYPE uuid USING candidate_id::uuid;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION pg_temp.ensure_constraint(tbl regclass, name text, def text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = tbl AND conname = name) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', tbl, name, def);
    END IF;
END $$;

SELECT pg_temp.ensure_constraint('webhook_endpoint', 'webhook_endpoint_url_check',
    $c$CHECK (url ~ '^https?://' AND length(url) <= 2000)$c$);
SELECT pg_temp.ensure_constraint('webhook_endpoint', 'webhook_endpoint_secret_check',
    $c$CHECK (from_env OR secret IS NOT NULL)$c$);
SELECT pg_temp.ensure_constraint('webhook_endpoint', 'webhook_endpoint_event_types_check',
    $c$CHECK (event_types <@ ARRAY['session.started', 'session.completed', 'session.abandoned',
                                   'session.time_extended', 'session.silent']::text[])$c$);
SELECT pg_temp.ensure_constraint('webhook_delivery', 'webhook_delivery_type_check',
    $c$CHECK (type IN ('session.started', 'session.completed', 'session.abandoned',
                       'session.time_extended', 'session.silent'))$c$);
SELECT pg_temp.ensure_constraint('webhook_delivery', 'webhook_delivery_status_check',
    $c$CHECK (status IN ('pending', 'delivered', 'failed'))$c$);
SELECT pg_temp.ensure_constraint('webhook_delivery', 'webhook_delivery_silent_check',
    $c$CHECK ((type = 'session.silent') = (silent_since IS NOT NULL))$c$);
SELECT pg_temp.ensure_constraint('webhook_delivery', 'webhook_delivery_event_unique',
    $c$UNIQUE (endpoint_id, event_id)$c$);
SELECT pg_temp.ensure_constraint('webhook_delivery', 'webhook_delivery_endpoint_fk',
    $c$FOREIGN KEY (endpoint_id) REFERENCES webhook_endpoint (id) ON DELETE CASCADE$c$);
-- Right to erasure: deleting a candidate deletes their deliveries with their session.
SELECT pg_temp.ensure_constraint('webhook_delivery', 'webhook_delivery_session_fk',
    $c$FOREIGN KEY (candidate_id) REFERENCES test_session (candidate_id) ON DELETE CASCADE$c$);

-- At most one endpoint comes from the environment (every process upserts it at start).
CREATE UNIQUE INDEX IF NOT EXISTS webhook_endpoint_one_from_env ON webhook_endpoint (from_env)
    WHERE from_env;
-- At most one session.silent per endpoint, session and silence.
CREATE UNIQUE INDEX IF NOT EXISTS webhook_delivery_one_per_silence
    ON webhook_delivery (endpoint_id, candidate_id, silent_since) WHERE type = 'session.silent';
-- What the worker claims: small, because delivered and failed rows leave it.
CREATE INDEX IF NOT EXISTS idx_webhook_delivery_due ON webhook_delivery (next_attempt_at)
    WHERE status = 'pending';
-- A session's deliveries in order (per-session ordering, the staff log's filter, erasure).
CREATE INDEX IF NOT EXISTS idx_webhook_delivery_session ON webhook_delivery (candidate_id, id);

-- The session as a webhook shows it: the row without answer bookkeeping, answers only for
-- endpoints that asked for them, and the database clock at the moment of the event.
CREATE OR REPLACE FUNCTION webhook_session_snapshot(t test_session, with_answers boolean)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT (to_jsonb(t) - 'answer_seq' - 'pending_answers' - 'tab_closed_at')
           || jsonb_build_object('server_now', now())
           || CASE WHEN with_answers THEN jsonb_build_object('pending_answers', t.pending_answers)
                   ELSE '{}'::jsonb END
$$;

-- The outbox writer. SECURITY DEFINER: a role allowed to change test_session enqueues even
-- without rights on the webhook tables (search_path pinned to the migration's).
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

-- Heartbeats never reach the function: WHEN is checked in the executor and is false for them.
CREATE OR REPLACE TRIGGER test_session_webhook_started
    AFTER INSERT ON test_session
    FOR EACH ROW EXECUTE FUNCTION webhook_enqueue_session_change();

CREATE OR REPLACE TRIGGER test_session_webhook_changed
    AFTER UPDATE ON test_session
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.deadline IS DISTINCT FROM NEW.deadline)
    EXECUTE FUNCTION webhook_enqueue_session_change();
