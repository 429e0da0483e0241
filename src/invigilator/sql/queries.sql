-- The named queries of the session store. Each block: a `-- name --` header, a one-line
-- description, then one statement. Time is always the database's `now()`.
--
-- Every write to a running session carries the same guard, "active and not yet due":
--     t.status = 'active' AND now() < (SELECT d.due_at FROM test_session_due(t, ...) d)
-- so a session whose deadline passed is ended for every caller even before the sweeper ran
-- (lazy expiry). When a guarded write matches no row, the store finalizes the session if it
-- is due (finalize_one) and reports why from get_session.

-- start_session --
-- Create an active session; returns nothing when the candidate already has one.
WITH created AS (
    INSERT INTO test_session (candidate_id, test_duration_minutes, planned_sections)
    VALUES (%(candidate_id)s, %(duration_minutes)s, %(planned_sections)s)
    ON CONFLICT (candidate_id) DO NOTHING
    RETURNING *
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, 'started', %(actor)s,
           jsonb_build_object('duration_minutes', test_duration_minutes)
      FROM created
)
SELECT created.*, now() AS server_now FROM created;

-- create_candidate --
-- Create a minimal candidate row for a host app that has none (an explicit option).
INSERT INTO candidate (candidate_id) VALUES (%(candidate_id)s) ON CONFLICT DO NOTHING;

-- get_session --
-- One session as stored, with the database clock.
SELECT t.*, now() AS server_now FROM test_session t WHERE t.candidate_id = %(candidate_id)s;

-- heartbeat --
-- The browser is alive: stamp last_heartbeat (and last_activity when the candidate acted),
-- clear a pending tab-close, and log `resumed` after a tab-close or a long silence.
WITH prev AS (
    SELECT candidate_id, last_heartbeat, tab_closed_at
      FROM test_session
     WHERE candidate_id = %(candidate_id)s
       FOR UPDATE
), beat AS (
    UPDATE test_session t
       SET last_heartbeat = now(),
           last_activity = CASE WHEN %(active)s THEN now() ELSE t.last_activity END,
           tab_closed_at = NULL
      FROM prev
     WHERE t.candidate_id = prev.candidate_id
       AND t.status = 'active'
       AND now() < (SELECT d.due_at FROM test_session_due(
               t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
    RETURNING t.*, prev.last_heartbeat AS previous_heartbeat, prev.tab_closed_at AS previous_tab_close
), resumed AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, 'resumed', 'candidate',
           jsonb_build_object(
               'gap_seconds', round(extract(epoch FROM now() - previous_heartbeat)::numeric, 1),
               'after_tab_close', previous_tab_close IS NOT NULL)
      FROM beat
     WHERE previous_tab_close IS NOT NULL OR now() - previous_heartbeat > %(resume_gap)s
)
SELECT beat.*, now() AS server_now FROM beat;

-- heartbeat_batch --
-- Many heartbeats in one statement (the hot path). Same effect per session as `heartbeat`;
-- sessions not returned were refused (ended, due or unknown) and are retried one by one.
-- Rows are locked in key order so concurrent batches cannot deadlock.
WITH beats AS (
    SELECT b.candidate_id, b.active
      FROM unnest(%(candidate_ids)s, %(active)s::boolean[]) AS b (candidate_id, active)
), prev AS (
    SELECT t.candidate_id, t.last_heartbeat, t.tab_closed_at
      FROM test_session t
      JOIN beats b ON b.candidate_id = t.candidate_id
     WHERE t.status = 'active'
     ORDER BY t.candidate_id
       FOR UPDATE OF t
), beat AS (
    UPDATE test_session t
       SET last_heartbeat = now(),
           last_activity = CASE WHEN b.active THEN now() ELSE t.last_activity END,
           tab_closed_at = NULL
      FROM beats b
      JOIN prev p ON p.candidate_id = b.candidate_id
     WHERE t.candidate_id = b.candidate_id
       AND t.status = 'active'
       AND now() < (SELECT d.due_at FROM test_session_due(
               t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
    RETURNING t.candidate_id, t.status, t.deadline,
              p.last_heartbeat AS previous_heartbeat, p.tab_closed_at AS previous_tab_close
), resumed AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, 'resumed', 'candidate',
           jsonb_build_object(
               'gap_seconds', round(extract(epoch FROM now() - previous_heartbeat)::numeric, 1),
               'after_tab_close', previous_tab_close IS NOT NULL)
      FROM beat
     WHERE previous_tab_close IS NOT NULL OR now() - previous_heartbeat > %(resume_gap)s
)
SELECT candidate_id, status, deadline, now() AS server_now FROM beat;

-- record_activity --
-- The candidate typed, clicked or scrolled.
UPDATE test_session t
   SET last_activity = now()
 WHERE t.candidate_id = %(candidate_id)s
   AND t.status = 'active'
   AND now() < (SELECT d.due_at FROM test_session_due(
           t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
RETURNING t.*, now() AS server_now;

-- complete_section --
-- Append a section to sections_completed unless it is there already (set semantics, order kept).
WITH added AS (
    UPDATE test_session t
       SET sections_completed = t.sections_completed || jsonb_build_array(%(section)s::text),
           last_activity = now()
     WHERE t.candidate_id = %(candidate_id)s
       AND t.status = 'active'
       AND NOT t.sections_completed @> jsonb_build_array(%(section)s::text)
       AND (t.planned_sections IS NULL OR t.planned_sections @> jsonb_build_array(%(section)s::text))
       AND now() < (SELECT d.due_at FROM test_session_due(
               t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
    RETURNING t.*
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, 'section_completed', 'candidate',
           jsonb_build_object('section', %(section)s::text,
                              'count', jsonb_array_length(sections_completed))
      FROM added
)
SELECT added.*, now() AS server_now FROM added;

-- save_answers --
-- Merge answers into pending_answers. A question keeps the value of the highest `seq` saved
-- for it: an older save never overwrites a newer one; the same seq again is a harmless retry.
-- The row lock serialises concurrent saves, and each merges into the row as the previous left it.
WITH saved AS (
    UPDATE test_session t
       SET pending_answers = t.pending_answers || (
               SELECT coalesce(jsonb_object_agg(a.key, a.value), '{}'::jsonb)
                 FROM jsonb_each(%(answers)s::jsonb) a
                WHERE coalesce((t.answer_seq ->> a.key)::bigint, -1) <= %(seq)s::bigint),
           answer_seq = t.answer_seq || (
               SELECT coalesce(jsonb_object_agg(a.key, %(seq)s::bigint), '{}'::jsonb)
                 FROM jsonb_each(%(answers)s::jsonb) a
                WHERE coalesce((t.answer_seq ->> a.key)::bigint, -1) <= %(seq)s::bigint),
           last_activity = now()
     WHERE t.candidate_id = %(candidate_id)s
       AND t.status = 'active'
       AND now() < (SELECT d.due_at FROM test_session_due(
               t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
    RETURNING t.*
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, 'answers_saved', 'candidate',
           jsonb_build_object('questions', (SELECT jsonb_agg(k ORDER BY k)
                                              FROM jsonb_object_keys(%(answers)s::jsonb) k),
                              'seq', %(seq)s::bigint)
      FROM saved
)
SELECT saved.*, octet_length(saved.pending_answers::text) AS answers_bytes, now() AS server_now
  FROM saved;

-- record_tab_close --
-- The tab is closing (a beacon): start the tab-close grace.
WITH marked AS (
    UPDATE test_session t
       SET tab_closed_at = now()
     WHERE t.candidate_id = %(candidate_id)s
       AND t.status = 'active'
       AND now() < (SELECT d.due_at FROM test_session_due(
               t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
    RETURNING t.*
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, 'tab_closed', 'candidate', '{}'::jsonb FROM marked
)
SELECT marked.*, now() AS server_now FROM marked;

-- record_client_event --
-- A browser-reported event (focus lost/regained, tab hidden/visible) on a running session.
INSERT INTO test_session_event (candidate_id, type, actor, detail)
SELECT t.candidate_id, %(type)s, 'candidate', %(detail)s::jsonb
  FROM test_session t
 WHERE t.candidate_id = %(candidate_id)s
   AND t.status = 'active'
   AND now() < (SELECT d.due_at FROM test_session_due(
           t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
RETURNING candidate_id, now() AS server_now;

-- extend_time --
-- Give a running session extra minutes; the stored deadline moves with them (trigger).
WITH extended AS (
    UPDATE test_session t
       SET extra_minutes = t.extra_minutes + %(minutes)s::integer
     WHERE t.candidate_id = %(candidate_id)s
       AND t.status = 'active'
       AND now() < (SELECT d.due_at FROM test_session_due(
               t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
    RETURNING t.*
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, 'time_extended', %(actor)s,
           jsonb_build_object('minutes', %(minutes)s::integer, 'reason', %(reason)s::text,
                              'deadline', deadline)
      FROM extended
)
SELECT extended.*, now() AS server_now FROM extended;

-- complete --
-- End a running session now (the candidate submits, or staff end it). First completion wins.
WITH ended AS (
    UPDATE test_session t
       SET status = %(status)s,
           completion_method = %(method)s,
           completed_at = now(),
           tab_closed_at = NULL
     WHERE t.candidate_id = %(candidate_id)s
       AND t.status = 'active'
       AND now() < (SELECT d.due_at FROM test_session_due(
               t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d)
    RETURNING t.*
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, status, %(actor)s,
           jsonb_strip_nulls(jsonb_build_object('method', completion_method, 'reason', %(reason)s::text))
      FROM ended
)
SELECT ended.*, now() AS server_now FROM ended;

-- finalize_one --
-- End one session if it is due (lazy expiry); waits for a sweeper that holds it.
WITH due AS (
    SELECT t.candidate_id, d.method, d.ends_at
      FROM test_session t
     CROSS JOIN LATERAL test_session_due(
           t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d
     WHERE t.candidate_id = %(candidate_id)s
       AND t.status = 'active'
       AND d.due_at <= now()
       FOR UPDATE OF t
), ended AS (
    UPDATE test_session t
       SET status = CASE WHEN due.method = 'heartbeat_timeout' THEN 'abandoned' ELSE 'completed' END,
           completion_method = due.method,
           completed_at = due.ends_at,
           tab_closed_at = NULL
      FROM due
     WHERE t.candidate_id = due.candidate_id AND t.status = 'active'
    RETURNING t.candidate_id, t.status, t.completion_method, t.completed_at
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, status, 'system',
           jsonb_build_object('method', completion_method, 'ended_at', completed_at)
      FROM ended
)
SELECT * FROM ended;

-- finalize_due --
-- The sweeper's batch: end up to `limit` due sessions, skipping rows another sweeper holds.
WITH due AS (
    SELECT t.candidate_id, d.method, d.ends_at
      FROM test_session t
     CROSS JOIN LATERAL test_session_due(
           t, %(abandon_after)s, %(deadline_grace)s, %(tab_close_grace)s, %(tab_close_submits)s) d
     WHERE t.status = 'active'
       AND d.due_at <= now()
     ORDER BY d.due_at
     LIMIT %(limit)s
       FOR UPDATE OF t SKIP LOCKED
), ended AS (
    UPDATE test_session t
       SET status = CASE WHEN due.method = 'heartbeat_timeout' THEN 'abandoned' ELSE 'completed' END,
           completion_method = due.method,
           completed_at = due.ends_at,
           tab_closed_at = NULL
      FROM due
     WHERE t.candidate_id = due.candidate_id AND t.status = 'active'
    RETURNING t.candidate_id, t.status, t.completion_method, t.completed_at
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT candidate_id, status, 'sweeper',
           jsonb_build_object('method', completion_method, 'ended_at', completed_at)
      FROM ended
)
SELECT * FROM ended ORDER BY completed_at, candidate_id;

-- find_active --
-- The guide's "Find Active Sessions": active with time left, over the stored deadline (indexed).
SELECT t.*, now() AS server_now
  FROM test_session t
 WHERE t.status = 'active' AND t.deadline > now()
 ORDER BY t.deadline, t.candidate_id
 LIMIT %(limit)s;

-- find_abandoned --
-- The guide's "Find Abandoned Sessions": active, silent for `silent_for` (never beat: since start).
SELECT t.*, now() AS server_now
  FROM test_session t
 WHERE t.status = 'active'
   AND coalesce(t.last_heartbeat, t.test_start_time) < now() - %(silent_for)s::interval
 ORDER BY coalesce(t.last_heartbeat, t.test_start_time), t.candidate_id
 LIMIT %(limit)s;

-- list_sessions --
-- A page of sessions, newest start first, keyset-paginated on (test_start_time, candidate_id).
SELECT t.*, now() AS server_now
  FROM test_session t
 WHERE (%(status)s::text IS NULL OR t.status = %(status)s::text)
   AND (%(after_start)s::timestamptz IS NULL
        OR (t.test_start_time, t.candidate_id::text) < (%(after_start)s::timestamptz, %(after_id)s::text))
 ORDER BY t.test_start_time DESC, t.candidate_id::text DESC
 LIMIT %(limit)s;

-- list_events --
-- A session's timeline, oldest first.
SELECT e.id, e.candidate_id, e.type, e.at, e.actor, e.detail
  FROM test_session_event e
 WHERE e.candidate_id = %(candidate_id)s
 ORDER BY e.id;
