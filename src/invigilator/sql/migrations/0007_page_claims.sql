-- 0007 page claims: every page (a tab, a window, a device) that opens a session claims it, and
-- the session's `pages` policy says what that means: `single` (the default), the newest page
-- takes over and a write from an older one is refused (`page_superseded`); `multiple`, pages
-- coexist. The claim in force is test_session.page_id, on the session's own row, so the guard
-- of a write reads it from the row it locks (a claim and a write from an older page cannot
-- both win); the claims themselves (device, address, first and last seen) are rows of
-- test_session_page. Heartbeats neither carry nor check a page: the hot path is unchanged.
-- Answer rows keep the time each edit was made: `seq` is that time (docs/schema.md).
-- Idempotent, like the others.

-- varchar(16), like the per-session policy columns of the proctor controls; never NULL: a
-- start writes the deployment's default (INVIGILATOR_PAGES), the guide's own INSERT gets 'single'.
ALTER TABLE test_session ADD COLUMN IF NOT EXISTS pages varchar(16) NOT NULL DEFAULT 'single';
-- The newest claim's page id; NULL until a page claims (API clients that name no page).
ALTER TABLE test_session ADD COLUMN IF NOT EXISTS page_id text;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'test_session_pages_check') THEN
        ALTER TABLE test_session ADD CONSTRAINT test_session_pages_check
            CHECK (pages IN ('single', 'multiple'));
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS test_session_page (
    candidate_id   varchar(36) NOT NULL,
    page_id        text        NOT NULL,
    user_agent     text,
    client_address text,
    first_seen     timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz NOT NULL DEFAULT now(),
    -- set when a newer page took over (policy `single`); a new claim by this page clears it
    superseded_at  timestamptz,
    CONSTRAINT test_session_page_pkey PRIMARY KEY (candidate_id, page_id),
    CONSTRAINT test_session_page_id_check CHECK (invigilator_is_name(page_id, 64))
);

DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') = 'uuid'::regtype
       AND (SELECT atttypid FROM pg_attribute
             WHERE attrelid = 'test_session_page'::regclass AND attname = 'candidate_id') <> 'uuid'::regtype
    THEN
        ALTER TABLE test_session_page ALTER COLUMN candidate_id TYPE uuid USING candidate_id::uuid;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'test_session_page_session_fk') THEN
        ALTER TABLE test_session_page ADD CONSTRAINT test_session_page_session_fk
            FOREIGN KEY (candidate_id) REFERENCES test_session (candidate_id) ON DELETE CASCADE;
    END IF;
END $$;

-- The rule of page claims: may this page write to a session whose policy is `pages` and whose
-- newest claim is `current_page`? A write that names no page (an API client, the guide's SQL)
-- is not a page's, and a session no page has claimed yet has nobody to take over from.
CREATE OR REPLACE FUNCTION test_session_page_may_write(pages text, current_page text, page text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT page IS NULL OR pages IS DISTINCT FROM 'single' OR current_page IS NULL
        OR current_page = page
$$;

-- How many devices (user agents) and addresses a session's pages came from: more than one of
-- either is what the live view marks and the report counts.
CREATE OR REPLACE FUNCTION test_session_page_spread(candidate anyelement, OUT devices integer,
                                                    OUT addresses integer)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT count(DISTINCT coalesce(p.user_agent, '')), count(DISTINCT coalesce(p.client_address, ''))
      FROM test_session_page p WHERE p.candidate_id = candidate
$$;

-- A webhook shows the session's policy but not which page holds it (an internal id).
CREATE OR REPLACE FUNCTION webhook_session_snapshot(t test_session, with_answers boolean)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT (to_jsonb(t) - 'answer_seq' - 'pending_answers' - 'tab_closed_at' - 'page_id')
           || jsonb_build_object('server_now', now())
           || CASE WHEN with_answers
                   THEN jsonb_build_object('pending_answers', test_session_answers(t.candidate_id))
                   ELSE '{}'::jsonb END
$$;
