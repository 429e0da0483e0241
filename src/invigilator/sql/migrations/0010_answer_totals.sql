-- 0010 answer totals: the per-session size limit checked at the cost of this save, not of
-- every answer the session holds; and an index for the sweeper's pick of lagging mirrors.
-- The save statement kept summing the session's answer rows to check the limit: a cost that
-- grows with the number of questions (a hostile client can make tens of thousands of tiny ones
-- within the byte limit). One narrow row per session now holds the sum, and the save
-- statement moves it by what it replaces. Idempotent, like the others.

-- The sum of (bytes + octet_length(question)) over the session's answer rows: what the
-- per-session limit counts. Every change to a session's answer rows updates this row in the
-- same statement (save_answers; retention removes both), so a save can tell from its xmin
-- whether another save committed after the snapshot it computed its change from.
CREATE TABLE IF NOT EXISTS test_session_answer_total (
    candidate_id varchar(36) NOT NULL,
    bytes        bigint      NOT NULL,
    CONSTRAINT test_session_answer_total_pkey PRIMARY KEY (candidate_id)
);

-- A host app keyed by uuid: follow test_session's key type, as the other tables do.
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id') = 'uuid'::regtype
       AND (SELECT atttypid FROM pg_attribute
             WHERE attrelid = 'test_session_answer_total'::regclass
               AND attname = 'candidate_id') <> 'uuid'::regtype THEN
        ALTER TABLE test_session_answer_total
            ALTER COLUMN candidate_id TYPE uuid USING candidate_id::uuid;
    END IF;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'test_session_answer_total_fk') THEN
        ALTER TABLE test_session_answer_total ADD CONSTRAINT test_session_answer_total_fk
            FOREIGN KEY (candidate_id) REFERENCES test_session (candidate_id) ON DELETE CASCADE;
    END IF;
END $$;

-- Every session's answers as they are: the totals start exact (a second run recomputes them).
INSERT INTO test_session_answer_total (candidate_id, bytes)
SELECT a.candidate_id, sum(a.bytes + octet_length(a.question))
  FROM test_session_answer a
 GROUP BY a.candidate_id
    ON CONFLICT (candidate_id) DO UPDATE SET bytes = excluded.bytes
 WHERE test_session_answer_total.bytes IS DISTINCT FROM excluded.bytes;

-- The sweeper takes the lagging mirrors one session per transaction, oldest first: an index,
-- so each pick reads one entry instead of sorting every lagging session. A save adds an entry
-- only when its session joins the list (once per refresh), not at every save.
CREATE INDEX IF NOT EXISTS idx_test_session_answer_unsynced_since
    ON test_session_answer_unsynced (since);
