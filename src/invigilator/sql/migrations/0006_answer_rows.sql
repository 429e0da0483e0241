-- 0006 answer rows: one row per question, so a save costs what it writes, not what the
-- candidate wrote before (one JSONB value per session was rewritten whole by every save:
-- decompressed, merged, recompressed, new TOAST chunks). The guide's `pending_answers` keeps
-- its meaning for SQL readers as a mirror of the rows: refreshed within a bounded delay while
-- the session runs (the sweeper), and exactly at the end (the ending statements' transaction).
-- Idempotent, like the others.

CREATE TABLE IF NOT EXISTS test_session_answer (
    candidate_id varchar(36) NOT NULL,
    question     text        NOT NULL,
    value        jsonb       NOT NULL,
    -- the save's `seq`: per question the highest wins; the same again is a harmless retry
    seq          bigint      NOT NULL,
    -- octet_length(value::text), kept so the per-session limit sums numbers, not documents
    bytes        integer     NOT NULL,
    saved_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT test_session_answer_pkey PRIMARY KEY (candidate_id, question)
);

-- Sessions whose rows changed since pending_answers last mirrored them (the sweeper's list).
CREATE TABLE IF NOT EXISTS test_session_answer_unsynced (
    candidate_id varchar(36) NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT test_session_answer_unsynced_pkey PRIMARY KEY (candidate_id)
);

-- A host app keyed by uuid: follow test_session's key type, as the other tables do.
DO $$
DECLARE
    tbl text;
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') = 'uuid'::regtype THEN
        FOREACH tbl IN ARRAY ARRAY['test_session_answer', 'test_session_answer_unsynced'] LOOP
            IF (SELECT atttypid FROM pg_attribute
                 WHERE attrelid = tbl::regclass AND attname = 'candidate_id') <> 'uuid'::regtype THEN
                EXECUTE format('ALTER TABLE %I ALTER COLUMN candidate_id TYPE uuid USING candidate_id::uuid', tbl);
            END IF;
        END LOOP;
    END IF;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'test_session_answer_session_fk') THEN
        ALTER TABLE test_session_answer ADD CONSTRAINT test_session_answer_session_fk
            FOREIGN KEY (candidate_id) REFERENCES test_session (candidate_id) ON DELETE CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'test_session_answer_unsynced_fk') THEN
        ALTER TABLE test_session_answer_unsynced ADD CONSTRAINT test_session_answer_unsynced_fk
            FOREIGN KEY (candidate_id) REFERENCES test_session (candidate_id) ON DELETE CASCADE;
    END IF;
END $$;

-- A question is named by the rule of ids and names (migration 0005); answers adopted below
-- from before that rule are kept as they are (NOT VALID checks only new rows).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'test_session_answer_question_check') THEN
        ALTER TABLE test_session_answer ADD CONSTRAINT test_session_answer_question_check
            CHECK (invigilator_is_name(question, 128)) NOT VALID;
    END IF;
END $$;

-- Every answer a session holds today becomes its row (adoption loses none).
INSERT INTO test_session_answer (candidate_id, question, value, seq, bytes, saved_at)
SELECT t.candidate_id, a.key, a.value, coalesce((t.answer_seq ->> a.key)::bigint, 0),
       octet_length(a.value::text), t.updated_at
  FROM test_session t, jsonb_each(t.pending_answers) a
    ON CONFLICT (candidate_id, question) DO NOTHING;

-- A session's answers as one object, and their seqs: what pending_answers and answer_seq mirror.
CREATE OR REPLACE FUNCTION test_session_answers(candidate anyelement) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(a.question, a.value), '{}'::jsonb)
      FROM test_session_answer a WHERE a.candidate_id = candidate
$$;

CREATE OR REPLACE FUNCTION test_session_answer_seqs(candidate anyelement) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(a.question, a.seq), '{}'::jsonb)
      FROM test_session_answer a WHERE a.candidate_id = candidate
$$;

-- A webhook shows every committed answer at once: from the rows, not the mirror.
CREATE OR REPLACE FUNCTION webhook_session_snapshot(t test_session, with_answers boolean)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT (to_jsonb(t) - 'answer_seq' - 'pending_answers' - 'tab_closed_at')
           || jsonb_build_object('server_now', now())
           || CASE WHEN with_answers
                   THEN jsonb_build_object('pending_answers', test_session_answers(t.candidate_id))
                   ELSE '{}'::jsonb END
$$;
