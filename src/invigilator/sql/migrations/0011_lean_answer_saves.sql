-- 0011 lean answer saves: what a save did beyond its one-row upsert, cut (BENCHMARKS.md §5).
-- Profiled on the embedded server (perf, EXPLAIN (ANALYZE, BUFFERS, WAL)): the answer table's
-- CHECK re-parsed the body of a SQL function at every save; the running total took a snapshot
-- read of the total and of the answers replaced, and a retry when another save raced it; and
-- every save appended a timeline event. Idempotent, like the others.

-- The rule of ids and names (0005), one regular expression: 1 to max_length characters of the
-- alphabet, at least one of them a letter or digit (the same names as 0005's three tests).
-- invigilator_is_name is redefined with it, and the CHECKs of the tables every save, claim or
-- heartbeat writes state it inline, as one operator and its pattern: PostgreSQL prepares a
-- table's CHECKs once per statement that writes it, and a CHECK calling a SQL function had that
-- function inlined each time, its body parsed anew (about a tenth of a save's server CPU;
-- heartbeat batches paid it too).
CREATE OR REPLACE FUNCTION invigilator_name_pattern(max_length integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '^(?=.*[A-Za-z0-9])[A-Za-z0-9._:@+-]{1,' || max_length || '}$'
$$;

CREATE OR REPLACE FUNCTION invigilator_is_name(name text, max_length integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT name ~ invigilator_name_pattern(max_length)
$$;

-- A CHECK that calls invigilator_is_name becomes the same rule inline, under the same name and
-- as valid as it was (a NOT VALID one stays so: rows adopted from before are kept as they are).
CREATE OR REPLACE FUNCTION pg_temp.inline_name_check(tbl regclass, con text, name text,
                                                     max_length integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    was_valid boolean;
BEGIN
    SELECT c.convalidated INTO was_valid
      FROM pg_constraint c
     WHERE c.conrelid = tbl AND c.conname = con
       AND pg_get_constraintdef(c.oid) LIKE '%invigilator_is_name%';
    IF was_valid IS NULL THEN
        RETURN;  -- absent (a uuid key needs none), or inline already
    END IF;
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', tbl, con);
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%s ~ %L) NOT VALID', tbl, con, name,
                   invigilator_name_pattern(max_length));
    IF was_valid THEN
        EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, con);
    END IF;
END $$;

SELECT pg_temp.inline_name_check('test_session_answer', 'test_session_answer_question_check',
                                 'question', 128);
SELECT pg_temp.inline_name_check('test_session_page', 'test_session_page_id_check', 'page_id', 64);
SELECT pg_temp.inline_name_check('test_session', 'test_session_candidate_id_format',
                                 'candidate_id::text', 36);

-- What the last save of an answer added to its session's total: its size and its question's
-- when that save was the question's first, the change of size since (maybe negative) after.
-- The save statement reads it back from the row it wrote, so the total moves by exactly what
-- was replaced, also when saves of one session race (PostgreSQL before 18 has no RETURNING
-- OLD); rows from before keep 0, which nothing reads.
ALTER TABLE test_session_answer ADD COLUMN IF NOT EXISTS bytes_added integer NOT NULL DEFAULT 0;

-- A session with answer rows has its total (0010 made them, every save writes both since): the
-- save adds to it and no longer recounts.
INSERT INTO test_session_answer_total (candidate_id, bytes)
SELECT a.candidate_id, sum(a.bytes + octet_length(a.question))
  FROM test_session_answer a
 WHERE NOT EXISTS (SELECT FROM test_session_answer_total x WHERE x.candidate_id = a.candidate_id)
 GROUP BY a.candidate_id
    ON CONFLICT (candidate_id) DO NOTHING;

-- The per-session limit refuses a save after the fact: the statement that would go over it
-- stops here, so none of its writes commit (the store answers 413, PayloadTooLarge).
CREATE OR REPLACE FUNCTION test_session_answers_too_large(total bigint, max_total_bytes bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the session''s answers would exceed % bytes', max_total_bytes
        USING ERRCODE = 'check_violation', CONSTRAINT = 'test_session_answers_size',
              TABLE = 'test_session_answer_total', DETAIL = format('%s bytes', total);
END $$;
